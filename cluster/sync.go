package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/imapgw/imapgw/limiter"
)

// subscriber applies other nodes' events until the subscription breaks
// (then it tells the loop, which reconnects and reloads).
func (c *Cluster) subscriber(ctx context.Context, ps *redis.PubSub, lost chan<- struct{}) {
	defer close(lost)
	for {
		msg, err := ps.ReceiveMessage(ctx)
		if err != nil {
			return
		}
		c.handle(msg.Payload)
	}
}

func (c *Cluster) handle(payload string) {
	var e event
	if err := json.Unmarshal([]byte(payload), &e); err != nil || e.Node == c.node || c.pol == nil {
		return
	}
	switch e.T {
	case "ban":
		if e.Ban != nil && c.pol.ApplyBan(*e.Ban) {
			c.m.received.Inc()
			c.log.Info("cluster: ban from another node applied", "prefix", e.Ban.Prefix, "node", e.Node,
				"reason", e.Ban.Reason, "until", e.Ban.Until)
		}
	case "lift":
		if p, err := netip.ParsePrefix(e.Prefix); err == nil && c.pol.ApplyLift(p) {
			c.m.received.Inc()
			c.log.Info("cluster: ban lifted by another node", "prefix", p, "node", e.Node)
		}
	case "protect":
		if u, err := strconv.ParseUint(e.User, 16, 64); err == nil {
			c.pol.ApplyProtect(u, time.UnixMilli(e.UntilMS))
		}
	}
}

// sync makes the local bans and Redis agree after a (re)connect: the live
// bans of the index are applied here; bans made or lifted here while Redis
// was away are pushed; other nodes' bans gone from the index are lifted here;
// this node's bans missing there are pushed unless another node lifted them.
func (c *Cluster) sync(ctx context.Context) error {
	if c.pol == nil {
		return nil
	}
	// The local bans are read before the index: the subscription is already
	// on, and a ban it applies after the index was read is in no snapshot
	// here, so it cannot be taken for one lifted while this node was away
	// (it was, once in seven runs of TestClusterRedisOutage). A ban in the
	// index is written there before it is published.
	local := map[netip.Prefix]limiter.Ban{}
	for _, b := range c.pol.Bans() {
		local[b.Prefix] = b
	}
	remote, err := c.loadBans(ctx)
	if err != nil {
		c.fail("load", err)
		return err
	}
	for _, b := range remote {
		// Our own too: a node restarted without its state dir gets them back.
		if c.pol.ApplyBan(b) && b.Node != c.node {
			c.m.received.Inc()
		}
	}
	pending, err := c.pushPending(ctx)
	if err != nil {
		return err
	}
	for p, b := range local {
		if _, ok := remote[p]; ok || pending[p] {
			continue
		}
		if !c.mine(b) {
			c.pol.ApplyLift(p) // lifted, or ended early, while this node was away
			continue
		}
		lifted, err := c.rdb.Exists(ctx, c.key("lifted:"+p.String())).Result()
		if err != nil {
			return err
		}
		if lifted > 0 {
			c.pol.ApplyLift(p)
		} else if err := c.writeBan(ctx, b); err != nil {
			return err
		}
	}
	return nil
}

// pushPending writes the bans made or lifted here that did not reach Redis
// (made while it was away, or past a full queue) and returns them.
func (c *Cluster) pushPending(ctx context.Context) (map[netip.Prefix]bool, error) {
	c.mu.Lock()
	pending := c.pending
	c.pending = make(map[netip.Prefix]bool)
	c.mu.Unlock()
	// The live table decides, read after pending was taken: a ban made since
	// the caller's snapshot must be pushed as a ban, not as a lift.
	local := map[netip.Prefix]limiter.Ban{}
	if len(pending) > 0 {
		for _, b := range c.pol.Bans() {
			local[b.Prefix] = b
		}
	}
	for p := range pending {
		var err error
		if b, ok := local[p]; ok && c.mine(b) {
			err = c.writeBan(ctx, b)
		} else if !ok {
			err = c.writeLift(ctx, p)
		}
		if err != nil {
			c.markPendingAll(pending)
			return nil, err
		}
	}
	return pending, nil
}

func (c *Cluster) markPendingAll(ps map[netip.Prefix]bool) {
	c.mu.Lock()
	for p := range ps {
		c.pending[p] = true
	}
	c.mu.Unlock()
}

// mine reports whether this node made b (bans from before [cluster] have no node).
func (c *Cluster) mine(b limiter.Ban) bool { return b.Node == c.node || b.Node == "" }

// loadBans reads the live bans from the index: one ZRANGEBYSCORE, one MGET.
func (c *Cluster) loadBans(ctx context.Context) (map[netip.Prefix]limiter.Ban, error) {
	now := time.Now().UnixMilli()
	prefixes, err := c.rdb.ZRangeByScore(ctx, c.key("bans"), &redis.ZRangeBy{Min: "(" + strconv.FormatInt(now, 10), Max: "+inf"}).Result()
	if err != nil {
		return nil, fmt.Errorf("loading bans: %w", err)
	}
	out := make(map[netip.Prefix]limiter.Ban, len(prefixes))
	if len(prefixes) == 0 {
		return out, nil
	}
	keys := make([]string, len(prefixes))
	for i, p := range prefixes {
		keys[i] = c.key("ban:" + p)
	}
	vals, err := c.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("loading bans: %w", err)
	}
	for _, v := range vals {
		s, ok := v.(string)
		if !ok {
			continue // expired between the two reads
		}
		var b limiter.Ban
		if json.Unmarshal([]byte(s), &b) == nil && b.Prefix.IsValid() {
			out[b.Prefix] = b
		}
	}
	return out, nil
}
