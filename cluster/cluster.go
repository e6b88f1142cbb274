package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/limiter"
)

// Timings of the connection loop. A heartbeat has more time than a login's
// call: a node is only marked down when Redis stays silent that long.
const (
	heartbeatEvery   = time.Second
	heartbeatTimeout = time.Second
	nodeTTL          = 10 * time.Second // a node is "seen" while its heartbeat key lives
	backoffFirst     = 200 * time.Millisecond
	backoffMost      = 2 * time.Second
	syncTimeout      = 2 * time.Second // writes and loads off the login path
)

// errDown is returned on the login path while Redis is away: no waiting.
var errDown = errors.New("cluster: redis is down")

// Policy is what the cluster applies to and reads from the local policy;
// *limiter.Limiter implements it.
type Policy interface {
	SetShared(s limiter.SharedStore, node string)
	ApplyBan(b limiter.Ban) bool
	ApplyLift(p netip.Prefix) bool
	ApplyProtect(user uint64, until time.Time)
	Bans() []limiter.Ban
}

var _ Policy = (*limiter.Limiter)(nil)

// Options carries the seams; the zero value works.
type Options struct {
	Logger     *slog.Logger          // default slog.Default()
	Registerer prometheus.Registerer // nil: metrics counted, not registered
}

// Cluster is this node's link to the shared state. Build it with New, attach
// the policy with Attach, then Run it.
type Cluster struct {
	rdb     redis.UniversalClient
	addr    string // cluster.redis without its password
	prefix  string
	node    string
	timeout time.Duration
	log     *slog.Logger
	m       *metrics
	started time.Time

	pol      Policy
	up       atomic.Bool
	synced   chan struct{} // closed at the first connection's end of sync
	syncOnce sync.Once
	queue    chan write // ban writes, lifts and successes, in order

	mu        sync.Mutex
	lastErr   string
	lastErrAt time.Time
	pending   map[netip.Prefix]bool // bans made or lifted here while Redis was away
}

// New builds the client from cfg (cluster.redis must be set). It does not
// connect: Run does, and keeps reconnecting.
func New(cfg conf.Cluster, o Options) (*Cluster, error) {
	rdb, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		rdb:     rdb,
		addr:    conf.RedactURL(cfg.Redis),
		prefix:  cfg.KeyPrefix,
		node:    cfg.Node,
		timeout: cfg.Timeout.Duration,
		log:     o.Logger,
		started: time.Now(),
		queue:   make(chan write, 4096),
		synced:  make(chan struct{}),
		pending: make(map[netip.Prefix]bool),
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	if c.m, err = newMetrics(c, o.Registerer); err != nil {
		rdb.Close()
		return nil, err
	}
	return c, nil
}

// Client is the Redis client, for the other shared stores (cluster/certstore,
// cluster/pinstore) to use the same connections.
func (c *Cluster) Client() redis.UniversalClient { return c.rdb }

// Prefix is cluster.key_prefix: every key this fleet writes starts with it.
func (c *Cluster) Prefix() string { return c.prefix }

// Node is this gateway's name in the shared state (cluster.node).
func (c *Cluster) Node() string { return c.node }

// Timeout is cluster.timeout, the longest a login waits on Redis.
func (c *Cluster) Timeout() time.Duration { return c.timeout }

// Up reports whether Redis answered the last heartbeat.
func (c *Cluster) Up() bool { return c.up.Load() }

// Synced is closed once the first connection has loaded the live bans, so a
// node starting into a running fleet can wait for them before it listens.
func (c *Cluster) Synced() <-chan struct{} { return c.synced }

// Attach makes p share its state through the cluster: p reports its bans,
// failures and successes here, and the bans other nodes make reach p. Call
// it before Run and before the first login.
func (c *Cluster) Attach(p Policy) {
	c.pol = p
	p.SetShared(c, c.node)
}

// Run connects, keeps the heartbeat, applies what other nodes publish and
// writes this node's changes until ctx ends; then it closes the client.
// While Redis is away it retries with backoff and the policy runs alone.
func (c *Cluster) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); c.writer(ctx) }()
	c.loop(ctx)
	wg.Wait()
	c.rdb.Close()
}

func (c *Cluster) loop(ctx context.Context) {
	backoff := backoffFirst
	everUp := false
	for ctx.Err() == nil {
		ps, lost, err := c.connect(ctx)
		if err != nil {
			c.fail("connect", err)
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, backoffMost)
			continue
		}
		backoff = backoffFirst
		c.setUp(true, everUp)
		c.syncOnce.Do(func() { close(c.synced) })
		everUp = true
		c.serve(ctx, lost)
		ps.Close()
		c.setUp(false, true)
	}
}

// connect subscribes, then loads the live bans and pushes what changed here
// while Redis was away: subscribing first, nothing published in between is
// missed.
// The returned channel is closed when the subscription breaks.
func (c *Cluster) connect(ctx context.Context) (*redis.PubSub, <-chan struct{}, error) {
	cctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	if err := c.heartbeat(cctx); err != nil {
		return nil, nil, err
	}
	for _, s := range scripts {
		if err := s.Load(cctx, c.rdb).Err(); err != nil {
			return nil, nil, fmt.Errorf("loading scripts: %w", err)
		}
	}
	ps := c.rdb.Subscribe(cctx, c.key("events"))
	if _, err := ps.Receive(cctx); err != nil {
		ps.Close()
		return nil, nil, fmt.Errorf("subscribing: %w", err)
	}
	lost := make(chan struct{})
	go c.subscriber(ctx, ps, lost)
	if err := c.sync(cctx); err != nil {
		ps.Close()
		return nil, nil, err
	}
	return ps, lost, nil
}

// serve beats until the heartbeat fails, the subscription breaks or ctx ends.
func (c *Cluster) serve(ctx context.Context, lost <-chan struct{}) {
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-lost:
			c.fail("subscribe", errors.New("subscription connection lost"))
			return
		case <-t.C:
			hctx, cancel := context.WithTimeout(ctx, heartbeatTimeout)
			err := c.heartbeat(hctx)
			if err == nil && c.pol != nil {
				_, err = c.pushPending(hctx)
			}
			cancel()
			if err != nil && ctx.Err() == nil {
				c.fail("heartbeat", err)
				return
			}
		}
	}
}

// setUp flips the state with one log line per change: one warning per outage.
func (c *Cluster) setUp(up, logIt bool) {
	if c.up.Swap(up) == up {
		return
	}
	c.m.up.Set(b2f(up))
	switch {
	case up && logIt:
		c.log.Warn("cluster: redis reachable again: bans reloaded, local changes pushed", "redis", c.addr)
	case up:
		c.log.Info("cluster: connected to redis", "redis", c.addr, "node", c.node)
	default:
		c.log.Warn("cluster: redis unreachable: the local policy decides alone until it returns", "redis", c.addr, "err", c.lastError())
	}
}

// fail records an error of op; logins never log here (one warning per outage).
func (c *Cluster) fail(op string, err error) {
	c.m.errors.WithLabelValues(op).Inc()
	c.mu.Lock()
	c.lastErr, c.lastErrAt = err.Error(), time.Now()
	c.mu.Unlock()
}

func (c *Cluster) lastError() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr
}

// heartbeat refreshes this node's key and its place in the node index.
func (c *Cluster) heartbeat(ctx context.Context) error {
	now := time.Now()
	_, err := c.timed(func() error {
		_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, c.key("node:"+c.node), c.started.UTC().Format(time.RFC3339), nodeTTL)
			p.ZAdd(ctx, c.key("nodes"), redis.Z{Score: float64(now.UnixMilli()), Member: c.node})
			p.ZRemRangeByScore(ctx, c.key("nodes"), "-inf", fmt.Sprint(now.Add(-nodeTTL).UnixMilli()))
			p.PExpire(ctx, c.key("nodes"), 3*nodeTTL)
			return nil
		})
		return err
	})
	return err
}

// timed runs f and observes its latency.
func (c *Cluster) timed(f func() error) (time.Duration, error) {
	start := time.Now()
	err := f()
	d := time.Since(start)
	c.m.latency.Observe(d.Seconds())
	return d, err
}

func (c *Cluster) key(s string) string { return c.prefix + s }

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
