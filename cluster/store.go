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
// changes are remembered and pushed by the next sync. Successes queued
// together go in one pipeline: under load they cost a fraction of a round
// trip each.
func (c *Cluster) writer(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case w := <-c.queue:
			var successes []write
			flush := func() { c.writeSuccesses(ctx, successes); successes = successes[:0] }
			for more := true; more; {
				if w.ban != nil || w.lift.IsValid() {
					flush() // in order: a ban after the successes before it
					c.apply(ctx, w)
				} else if successes = append(successes, w); len(successes) == 256 {
					flush()
				}
				select {
				case w = <-c.queue:
				default:
					more = false
				}
			}
			flush()
		}
	}
}

// apply writes one ban or lift, or marks it for the next sync.
func (c *Cluster) apply(ctx context.Context, w write) {
	p := w.lift
	if w.ban != nil {
		p = w.ban.Prefix
	}
	if !c.up.Load() {
		c.markPending(p)
		return
	}
	wctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	var err error
	if w.ban != nil {
		err = c.writeBan(wctx, *w.ban)
	} else {
		err = c.writeLift(wctx, w.lift)
	}
	if err != nil {
		c.markPending(p)
	}
}

// writeSuccesses runs the success script for each in one pipeline (the
// scripts are loaded at connect). Dropped while Redis is away.
func (c *Cluster) writeSuccesses(ctx context.Context, ws []write) {
	if len(ws) == 0 || !c.up.Load() {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	_, err := c.timed(func() error {
		_, err := c.rdb.Pipelined(wctx, func(p redis.Pipeliner) error {
			for _, w := range ws {
				successScript.EvalSha(wctx, p, []string{c.goodKey(w.user, w.net), c.key("src:" + w.source.String())},
					userHex(w.user), knownGoodFor.Milliseconds())
			}
			return nil
		})
		return err
	})
	if err != nil {
		c.fail("success", err)
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
