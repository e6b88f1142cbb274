package cluster

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Status is GET /api/v1/cluster: never the password.
type Status struct {
	Redis       string     `json:"redis"` // cluster.redis with the password replaced
	Up          bool       `json:"up"`
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt time.Time  `json:"last_error_at,omitzero"`
	Node        string     `json:"node"`
	KeyPrefix   string     `json:"key_prefix"`
	Timeout     string     `json:"timeout"`
	Nodes       []NodeSeen `json:"nodes"` // heartbeats in the last 10 s; empty while Redis is away
}

// NodeSeen is a node whose heartbeat Redis holds.
type NodeSeen struct {
	Name     string    `json:"name"`
	LastSeen time.Time `json:"last_seen"`
}

// Status reports the link and the nodes seen recently (one read, at most
// a second, skipped while Redis is down).
func (c *Cluster) Status() Status {
	c.mu.Lock()
	s := Status{Redis: c.addr, Up: c.up.Load(), LastError: c.lastErr, LastErrorAt: c.lastErrAt,
		Node: c.node, KeyPrefix: c.prefix, Timeout: c.timeout.String(), Nodes: []NodeSeen{}}
	c.mu.Unlock()
	if !s.Up {
		return s
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	min := strconv.FormatInt(time.Now().Add(-nodeTTL).UnixMilli(), 10)
	zs, err := c.rdb.ZRangeByScoreWithScores(ctx, c.key("nodes"), &redis.ZRangeBy{Min: min, Max: "+inf"}).Result()
	if err != nil {
		c.fail("heartbeat", err)
		return s
	}
	for _, z := range zs {
		name, _ := z.Member.(string)
		s.Nodes = append(s.Nodes, NodeSeen{Name: name, LastSeen: time.UnixMilli(int64(z.Score)).UTC()})
	}
	return s
}
