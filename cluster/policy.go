package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/imapgw/imapgw/limiter"
)

var _ limiter.SharedStore = (*Cluster)(nil)

// knownGoodFor matches the limiter's memory of a successful network.
const knownGoodFor = 30 * 24 * time.Hour

// Keys (all under cluster.key_prefix, all with a TTL but the ban index, which
// is trimmed at every write and expires with its last ban):
//
//	src:<prefix>        sorted set of "<user>:<secret>" failures by time, TTL source_window
//	acct:<user>         sorted set of failure times, TTL one hour
//	prot:<user>         protected mode's end (unix ms), TTL account_protect
//	good:<user>:<net>   known-good network, TTL 30 days
//	ban:<prefix>        the ban as JSON, TTL until it ends
//	lifted:<prefix>     a lift, TTL the lifted ban's rest: a node back from an outage does not re-push it
//	bans                index: prefix by end (unix ms)
//	node:<name>, nodes  heartbeats
//	events              the channel: bans, lifts, protections

// failureScript counts one failure for a source and its account and returns
// {distinct failures of the source, distinct accounts among them, the
// account's protected-mode end or 0}. Entering protected mode is published.
var failureScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local swin = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - swin)
redis.call('ZADD', KEYS[1], 'NX', now, ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -1025)
redis.call('PEXPIRE', KEYS[1], swin)
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local seen, accounts = {}, 0
for _, m in ipairs(members) do
  local u = string.match(m, '^[^:]*')
  if not seen[u] then seen[u] = true; accounts = accounts + 1 end
end
local awin = tonumber(ARGV[4])
local most = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - awin)
redis.call('ZADD', KEYS[2], now, ARGV[7])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(most + 1))
redis.call('PEXPIRE', KEYS[2], awin)
local untilms = tonumber(redis.call('GET', KEYS[3]) or '0')
if redis.call('ZCARD', KEYS[2]) >= most then
  local entering = untilms <= now
  untilms = now + tonumber(ARGV[6])
  redis.call('SET', KEYS[3], untilms, 'PX', ARGV[6])
  if entering then
    redis.call('PUBLISH', ARGV[8], cjson.encode({t = 'protect', u = ARGV[10], until_ms = untilms, n = ARGV[9]}))
  end
end
if untilms <= now then untilms = 0 end
return {#members, accounts, untilms}
`)

// successScript marks a network known-good for an account and forgives the
// source's failures on it.
var successScript = redis.NewScript(`
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
local p = ARGV[1] .. ':'
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(m, 1, #p) == p then redis.call('ZREM', KEYS[2], m) end
end
return 1
`)

// banScript stores a ban, indexes it, trims the index, drops the source's
// failures and any tombstone, and publishes the ban.
var banScript = redis.NewScript(`
local untilms, now = tonumber(ARGV[2]), tonumber(ARGV[3])
if untilms <= now then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', untilms - now)
redis.call('ZADD', KEYS[2], untilms, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], last[2])
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
`)

// liftScript removes a ban, leaves a tombstone for the ban's rest, and
// publishes the lift.
var liftScript = redis.NewScript(`
local now = tonumber(ARGV[2])
local untilms = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[1])
if untilms > now then redis.call('SET', KEYS[4], '1', 'PX', untilms - now) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
`)

// event is a message on the channel.
type event struct {
	T       string       `json:"t"` // "ban", "lift", "protect"
	Ban     *limiter.Ban `json:"b,omitempty"`
	Prefix  string       `json:"p,omitempty"`
	User    string       `json:"u,omitempty"` // hex account hash
	UntilMS int64        `json:"until_ms,omitempty"`
	Node    string       `json:"n"`
}

// write is one change queued for the writer: a ban, a lift or a success.
type write struct {
	ban    *limiter.Ban
	lift   netip.Prefix
	user   uint64 // success
	net    netip.Prefix
	source netip.Prefix
}

// Failure is limiter.SharedStore's: one script, one round trip, at most
// cluster.timeout.
func (c *Cluster) Failure(f limiter.SharedFailure) (limiter.SharedCounts, error) {
	if !c.up.Load() {
		return limiter.SharedCounts{}, errDown
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	u := userHex(f.User)
	var res []any
	_, err := c.timed(func() error {
		var err error
		res, err = failureScript.Run(ctx, c.rdb,
			[]string{c.key("src:" + f.Source.String()), c.key("acct:" + u), c.key("prot:" + u)},
			f.At.UnixMilli(), f.SourceWindow.Milliseconds(), u+":"+userHex(f.Secret),
			f.AccountWindow.Milliseconds(), f.AccountFailures, f.AccountProtect.Milliseconds(),
			c.node+":"+strconv.FormatInt(f.At.UnixNano(), 36)+":"+randHex(), c.key("events"), c.node, u).Slice()
		return err
	})
	if err != nil {
		c.fail("failure", err)
		return limiter.SharedCounts{}, err
	}
	if len(res) != 3 {
		return limiter.SharedCounts{}, fmt.Errorf("cluster: failure script returned %d values", len(res))
	}
	out := limiter.SharedCounts{Failures: toInt(res[0]), Accounts: toInt(res[1])}
	if ms := toInt(res[2]); ms > 0 {
		out.ProtectedUntil = time.UnixMilli(int64(ms))
	}
	return out, nil
}

// KnownGood is limiter.SharedStore's: one EXISTS, at most cluster.timeout.
func (c *Cluster) KnownGood(user uint64, net netip.Prefix) (bool, error) {
	if !c.up.Load() {
		return false, errDown
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	var n int64
	_, err := c.timed(func() error {
		var err error
		n, err = c.rdb.Exists(ctx, c.goodKey(user, net)).Result()
		return err
	})
	if err != nil {
		c.fail("known_good", err)
		return false, err
	}
	return n > 0, nil
}

// Success is limiter.SharedStore's: queued, never waited for. A success
// dropped (queue full, Redis away) only leaves a network unknown elsewhere.
func (c *Cluster) Success(user uint64, net, source netip.Prefix) {
	select {
	case c.queue <- write{user: user, net: net, source: source}:
	default:
		c.m.errors.WithLabelValues("success").Inc()
	}
}

// BanMade is limiter.SharedStore's: queued for the writer.
func (c *Cluster) BanMade(b limiter.Ban) { c.enqueue(write{ban: &b}, b.Prefix) }

// BanLifted is limiter.SharedStore's: queued for the writer.
func (c *Cluster) BanLifted(p netip.Prefix) { c.enqueue(write{lift: p}, p) }

// enqueue queues a ban change; a full queue marks it to push at the next
// reconnect's sync instead of blocking the policy.
func (c *Cluster) enqueue(w write, p netip.Prefix) {
	select {
	case c.queue <- w:
	default:
		c.mu.Lock()
		c.pending[p] = true
		c.mu.Unlock()
	}
}

// writer applies the queued changes in order. While Redis is away, ban
// changes are remembered and pushed by the next sync.
func (c *Cluster) writer(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case w := <-c.queue:
			c.apply(ctx, w)
		}
	}
}

func (c *Cluster) apply(ctx context.Context, w write) {
	isBan := w.ban != nil || w.lift.IsValid()
	p := w.lift
	if w.ban != nil {
		p = w.ban.Prefix
	}
	if !c.up.Load() {
		if isBan {
			c.markPending(p)
		}
		return
	}
	wctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	var err error
	switch {
	case w.ban != nil:
		err = c.writeBan(wctx, *w.ban)
	case w.lift.IsValid():
		err = c.writeLift(wctx, w.lift)
	default:
		_, err = c.timed(func() error {
			u := userHex(w.user)
			return successScript.Run(wctx, c.rdb, []string{c.goodKey(w.user, w.net), c.key("src:" + w.source.String())},
				u, knownGoodFor.Milliseconds()).Err()
		})
		if err != nil {
			c.fail("success", err)
		}
	}
	if err != nil && isBan {
		c.markPending(p)
	}
}

func (c *Cluster) markPending(p netip.Prefix) {
	c.mu.Lock()
	c.pending[p] = true
	c.mu.Unlock()
}

func (c *Cluster) writeBan(ctx context.Context, b limiter.Ban) error {
	b.Node = c.node
	data, err := json.Marshal(b)
	if err != nil {
		return err
	}
	msg, _ := json.Marshal(event{T: "ban", Ban: &b, Node: c.node})
	p := b.Prefix.String()
	_, err = c.timed(func() error {
		return banScript.Run(ctx, c.rdb,
			[]string{c.key("ban:" + p), c.key("bans"), c.key("src:" + p), c.key("lifted:" + p)},
			data, b.Until.UnixMilli(), time.Now().UnixMilli(), p, c.key("events"), msg).Err()
	})
	if err != nil {
		c.fail("ban", err)
	}
	return err
}

func (c *Cluster) writeLift(ctx context.Context, pfx netip.Prefix) error {
	p := pfx.String()
	msg, _ := json.Marshal(event{T: "lift", Prefix: p, Node: c.node})
	_, err := c.timed(func() error {
		return liftScript.Run(ctx, c.rdb,
			[]string{c.key("ban:" + p), c.key("bans"), c.key("src:" + p), c.key("lifted:" + p)},
			p, time.Now().UnixMilli(), c.key("events"), msg).Err()
	})
	if err != nil {
		c.fail("lift", err)
	}
	return err
}

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
	local := map[netip.Prefix]limiter.Ban{}
	for _, b := range c.pol.Bans() {
		local[b.Prefix] = b
	}
	pending, err := c.pushPending(ctx, local)
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
func (c *Cluster) pushPending(ctx context.Context, local map[netip.Prefix]limiter.Ban) (map[netip.Prefix]bool, error) {
	c.mu.Lock()
	pending := c.pending
	c.pending = make(map[netip.Prefix]bool)
	c.mu.Unlock()
	if local == nil && len(pending) > 0 {
		local = map[netip.Prefix]limiter.Ban{}
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

func (c *Cluster) goodKey(user uint64, net netip.Prefix) string {
	return c.key("good:" + userHex(user) + ":" + net.String())
}

func userHex(u uint64) string { return strconv.FormatUint(u, 16) }

func randHex() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func toInt(v any) int {
	switch n := v.(type) {
	case int64:
		return int(n)
	case string:
		i, _ := strconv.Atoi(n)
		return i
	}
	return 0
}
