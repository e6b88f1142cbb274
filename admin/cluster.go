package admin

import (
	"context"
	"net/http"
	"time"
)

// ClusterInfo is GET /api/v1/cluster (issue 13): the link to Redis, never its
// password. Enabled is false on a single node, and the rest is empty.
type ClusterInfo struct {
	Enabled     bool          `json:"enabled"`
	Redis       string        `json:"redis,omitempty"` // cluster.redis with the password replaced
	Up          bool          `json:"up"`
	LastError   string        `json:"last_error,omitempty"`
	LastErrorAt time.Time     `json:"last_error_at,omitzero"`
	Node        string        `json:"node,omitempty"`
	KeyPrefix   string        `json:"key_prefix,omitempty"`
	Timeout     string        `json:"timeout,omitempty"`
	Nodes       []ClusterNode `json:"nodes"` // heartbeats seen in the last 10 s
}

// ClusterNode is a gateway whose heartbeat Redis holds.
type ClusterNode struct {
	Name     string    `json:"name"`
	LastSeen time.Time `json:"last_seen"`
}

func (s *Server) cluster(w http.ResponseWriter, r *http.Request) {
	info := ClusterInfo{Nodes: []ClusterNode{}}
	if s.o.Cluster != nil {
		info = s.o.Cluster()
	}
	writeJSON(w, http.StatusOK, info)
}

// Cluster returns the gateway's cluster state.
func (c *Client) Cluster(ctx context.Context) (ClusterInfo, error) {
	var out ClusterInfo
	return out, c.do(ctx, "GET", "/api/v1/cluster", nil, &out)
}
