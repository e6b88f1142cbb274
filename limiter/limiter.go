// Package limiter is the gateway's policy: it admits or refuses connections
// (bans, per-source connection rate and concurrency, a global cap), accounts the
// failed logins the proxy reports, answers them with a tarpit delay, bans sources
// on a 4× ladder, protects attacked accounts without locking their owners out,
// and keeps bans and strikes across restarts in server.state_dir.
// It does not touch sockets or IMAP and never sees a password beyond a short keyed
// hash; the proxy asks it and tells it (issue 3 is the specification).
package limiter

import (
	"crypto/rand"
	"errors"
	"hash/maphash"
	"log/slog"
	randv2 "math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/imapgw/imapgw/conf"
)

// Reasons Admit refuses a connection at accept, before TLS.
var (
	ErrBanned      = errors.New("source is banned")
	ErrRate        = errors.New("source is over limits.connection_rate")
	ErrSourceLimit = errors.New("source is at limits.max_connections_per_source")
	ErrGatewayFull = errors.New("gateway is at limits.max_connections")
)

// ErrRefused is Try's answer when this source may not try this account now: the
// proxy answers NO [UNAVAILABLE] and never sends the credentials to the backend.
var ErrRefused = errors.New("login attempt refused by policy")

// Options carries the seams; the zero value works.
type Options struct {
	Now        func() time.Time      // default time.Now
	StateDir   string                // server.state_dir; "" keeps bans in memory only
	Logger     *slog.Logger          // default slog.Default()
	Registerer prometheus.Registerer // nil: metrics are counted but not registered
	Rand       func() float64        // jitter source in [0,1); default math/rand/v2
	SaveEvery  time.Duration         // Run's save period when state changed; default 30s
}

// Limiter holds every policy table. All methods are safe for concurrent use; one
// mutex guards the tables and is held only for map and list operations (no I/O,
// no hashing of secrets, no logging).
type Limiter struct {
	now       func() time.Time
	rand      func() float64
	log       *slog.Logger
	dir       string
	saveEvery time.Duration
	secretKey []byte       // HMAC key for password hashes, random per process
	userSeed  maphash.Seed // account names are kept as 64-bit keyed hashes
	metrics   *metrics

	// accountKey is bans.account_key, read without mu: userHash runs outside it.
	accountKey atomic.Pointer[string]

	mu       sync.Mutex
	b        conf.Bans
	lim      conf.Limits
	rates    *simplelru.LRU[netip.Prefix, *rate.Limiter]
	conns    map[netip.Prefix]int // open connections per source; entries exist only while > 0
	total    int                  // open connections, allow-listed ones included
	sources  *simplelru.LRU[netip.Prefix, *sourceFailures]
	accounts *simplelru.LRU[uint64, *account]
	good     *simplelru.LRU[goodKey, int64] // last success (unix ns) per account and network
	bans     banTable
	strikes  *simplelru.LRU[netip.Prefix, strike]
	gen      uint64      // bumped by every change to bans or strikes; Run saves when it moved
	listener BanListener // nil: none (SetBanListener)
	shared   SharedStore // nil: single node (SetShared)
	node     string      // this gateway's name in the bans it makes, with shared set

	// stableUsers: account hashes are stableUserHash, the same on every node
	// (set with a SharedStore); read without mu, as accountKey.
	stableUsers atomic.Bool

	// Logins in flight (Try to Failed/Succeeded/Done), per source and, from
	// sources not known-good, per account; guarded by mu. Entries exist only
	// while > 0, so their size is bounded by the sessions open, not max_tracked.
	flights     map[netip.Prefix]*flight
	acctFlights map[uint64]int

	saveMu   sync.Mutex // one Save at a time; guards savedGen
	savedGen uint64
}

// New builds a Limiter from validated config (conf.Validate) and, when
// o.StateDir is set, loads the saved bans and strikes. A corrupt state file is
// logged and moved aside; only an unreadable one or a metrics registration
// conflict is an error.
func New(b conf.Bans, l conf.Limits, o Options) (*Limiter, error) {
	lim := &Limiter{
		now:       o.Now,
		rand:      o.Rand,
		log:       o.Logger,
		dir:       o.StateDir,
		saveEvery: o.SaveEvery,
		secretKey: make([]byte, 32),
		userSeed:  maphash.MakeSeed(),
		b:         b,
		lim:       l,
		conns:     make(map[netip.Prefix]int),
		bans:      newBanTable(),
	}
	lim.flights, lim.acctFlights = make(map[netip.Prefix]*flight), make(map[uint64]int)
	lim.applyDefaults()
	lim.accountKey.Store(&b.AccountKey)
	rand.Read(lim.secretKey) // never fails on supported platforms (Go 1.24+)
	n := tracked(b)
	lim.rates = mustLRU[netip.Prefix, *rate.Limiter](n)
	lim.sources = mustLRU[netip.Prefix, *sourceFailures](n)
	lim.accounts = mustLRU[uint64, *account](n)
	lim.good = mustLRU[goodKey, int64](n)
	lim.strikes = mustLRU[netip.Prefix, strike](n)
	m, err := newMetrics(lim, o.Registerer)
	if err != nil {
		return nil, err
	}
	lim.metrics = m
	if err := lim.load(lim.now()); err != nil {
		return nil, err
	}
	return lim, nil
}

func (l *Limiter) applyDefaults() {
	if l.now == nil {
		l.now = time.Now
	}
	if l.rand == nil {
		l.rand = randv2.Float64
	}
	if l.log == nil {
		l.log = slog.Default()
	}
	if l.saveEvery <= 0 {
		l.saveEvery = 30 * time.Second
	}
}

// tracked is the size of every table; conf.Validate keeps it ≥ 16, the floor of
// 1 only keeps a hand-built zero config from breaking the LRU constructor.
func tracked(b conf.Bans) int { return max(b.MaxTracked, 1) }

func mustLRU[K comparable, V any](n int) *simplelru.LRU[K, V] {
	c, err := simplelru.NewLRU[K, V](n, nil)
	if err != nil { // only for n ≤ 0, which tracked rules out
		panic(err)
	}
	return c
}

// Update applies a reloaded config and keeps all state. A changed
// connection_rate starts every source with a full bucket at the new rate; a
// smaller max_tracked shrinks the tables at once (bans: soonest-ending first).
func (l *Limiter) Update(b conf.Bans, lim conf.Limits) {
	l.mu.Lock()
	if lim.ConnectionRate != l.lim.ConnectionRate {
		l.rates.Purge()
	}
	var evicted []Ban
	if n := tracked(b); n != tracked(l.b) {
		l.rates.Resize(n)
		l.sources.Resize(n)
		l.accounts.Resize(n)
		l.good.Resize(n)
		l.strikes.Resize(n)
		evicted = l.bans.trim(n)
		l.notifyLifted(evicted...)
		l.gen++
	}
	l.b, l.lim = b, lim
	l.accountKey.Store(&b.AccountKey)
	l.mu.Unlock()
	l.logEvicted(evicted)
}

// sourceKey is the table key for a client address: IPv4-mapped IPv6 unmapped,
// masked to bans.source_prefix_v4 / source_prefix_v6 (issue 3, rule 1).
func sourceKey(a netip.Addr, v4, v6 int) netip.Prefix {
	a = a.Unmap()
	bits := v6
	if a.Is4() {
		bits = v4
	}
	p, err := a.Prefix(bits)
	if err != nil { // bits out of range for the family: treat as a host
		p, _ = a.Prefix(a.BitLen())
	}
	return p
}

// key is sourceKey under the current config; callers hold mu.
func (l *Limiter) key(a netip.Addr) netip.Prefix {
	return sourceKey(a, l.b.SourcePrefixV4, l.b.SourcePrefixV6)
}

// allowed reports whether a (already unmapped) is in bans.allow; callers hold mu.
func (l *Limiter) allowed(a netip.Addr) bool {
	for _, p := range l.b.Allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
