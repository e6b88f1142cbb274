package acme

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of the challenge listeners (issue 11, point 4). A validation is a
// few requests of a few hundred bytes (one per vantage point of the CA, each
// answered in milliseconds), so everything here is small: the listeners are
// open to the whole Internet, share the process's file descriptors with the
// IMAP listeners and must never starve them.
const (
	// challengeTimeout bounds the TLS handshake on the TLS-ALPN-01
	// listener and the request head, the whole request and the answer on
	// the HTTP-01 listener. A CA's validator, even from far away, needs
	// well under a second; its own validation timeout is about 10 s.
	challengeTimeout = 5 * time.Second
	// challengeMaxHeader caps the request head. An HTTP-01 validation
	// (request line with a 43-byte token, Host, User-Agent, Accept) is
	// under 1 KB; net/http's default is 1 MB. (net/http reads up to 4 KB
	// more before it answers 431.)
	challengeMaxHeader = 4 << 10
	// maxChallengeConns caps the connections one challenge listener holds
	// at once: room for validations of dozens of names in parallel (a
	// handful of vantage points each), a browser and a scanner or two.
	maxChallengeConns = 256
	// challengeFDShare: one listener takes at most 1/challengeFDShare of
	// the process's file-descriptor limit, so both together leave 3/4 of
	// it to IMAP sessions (two each: client and backend) under any flood.
	challengeFDShare = 8
	// minChallengeConns keeps a listener usable under a tiny fd limit: a
	// CA validates from several vantage points at once (Pebble from 3, Let's
	// Encrypt from its primary and remote perspectives), and a validation
	// refused at one of them fails.
	minChallengeConns = 16
	// fullLogInterval spaces the warnings that a listener is at its cap:
	// a flood gets one line per interval with a count, not one per
	// connection.
	fullLogInterval = time.Minute
)

// Challenge names, the challenge label of
// imapgw_acme_challenge_connections_total.
const (
	challengeHTTP = "http-01"
	challengeALPN = "tls-alpn-01"
)

// Outcomes of a challenge connection at accept.
const (
	outcomeAccepted      = "accepted"
	outcomeRefusedFull   = "refused_full"   // the listener is at its cap
	outcomeRefusedPolicy = "refused_policy" // Options.Admit refused the source
)

// challengeCap is a challenge listener's connection cap for a process that
// may hold nofile descriptors (0: unknown): maxChallengeConns, less under a
// low fd limit.
func challengeCap(nofile uint64) int {
	if nofile == 0 {
		return maxChallengeConns
	}
	return int(max(minChallengeConns, min(maxChallengeConns, nofile/challengeFDShare)))
}

// newChallengeServer is the HTTP-01 server: small heads, short timeouts,
// and one request per connection (a validator never reuses one, so an idle
// keep-alive connection would only hold a slot).
func newChallengeServer(h http.Handler, log *slog.Logger) *http.Server {
	s := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: challengeTimeout,
		ReadTimeout:       challengeTimeout,
		WriteTimeout:      challengeTimeout,
		IdleTimeout:       challengeTimeout,
		MaxHeaderBytes:    challengeMaxHeader,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	s.SetKeepAlivesEnabled(false)
	return s
}

// challengeListener hands out only admitted connections: at most cap at
// once, and from sources Options.Admit lets in, the same admission as IMAP
// (bans, connection rate, per-source concurrency). Others are reset on the
// accept goroutine at once, before any read: a flood costs an accept and a
// close per connection, and never more than cap descriptors.
type challengeListener struct {
	net.Listener
	challenge string
	cap       int64
	admit     func(netip.Addr) (func(), error) // nil: everyone
	m         *metrics
	log       *slog.Logger

	open     atomic.Int64
	fullMu   sync.Mutex
	fullLast time.Time // last "at its cap" warning
	fullN    int       // refusals since then
}

func (m *Manager) limitChallenge(ln net.Listener, challenge string) *challengeListener {
	n := m.opts.ChallengeConnections
	if n <= 0 {
		n = challengeCap(fdLimit())
	}
	return &challengeListener{Listener: ln, challenge: challenge, cap: int64(n), admit: m.opts.Admit, m: m.metrics, log: m.log}
}

// Accept returns the next admitted connection; refused ones are closed here.
func (l *challengeListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ac := l.take(c); ac != nil {
			return ac, nil
		}
	}
}

// take admits c or closes it. The cap is checked first: it needs no lock.
func (l *challengeListener) take(c net.Conn) net.Conn {
	if l.open.Add(1) > l.cap {
		l.open.Add(-1)
		l.refuse(c, outcomeRefusedFull, nil)
		return nil
	}
	release := func() {}
	if l.admit != nil {
		var err error
		if release, err = l.admit(remoteAddr(c)); err != nil {
			l.open.Add(-1)
			l.refuse(c, outcomeRefusedPolicy, err)
			return nil
		}
	}
	l.m.challenges.WithLabelValues(l.challenge, outcomeAccepted).Inc()
	return &challengeConn{Conn: c, release: func() { release(); l.open.Add(-1) }}
}

// refuse resets c (no FIN exchange, no TIME_WAIT), counts it and logs it:
// each one at debug level, a full listener once per fullLogInterval at warn.
func (l *challengeListener) refuse(c net.Conn, outcome string, err error) {
	// Counted before the close: whoever sees the reset then sees the count.
	l.m.challenges.WithLabelValues(l.challenge, outcome).Inc()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		reason := "listener at its connection cap"
		if err != nil {
			reason = err.Error()
		}
		l.log.Debug("challenge connection refused", "client", c.RemoteAddr().String(), "challenge", l.challenge, "reason", reason)
	}
	if outcome == outcomeRefusedFull {
		l.warnFull()
	}
}

func (l *challengeListener) warnFull() {
	l.fullMu.Lock()
	defer l.fullMu.Unlock()
	l.fullN++
	if now := time.Now(); now.Sub(l.fullLast) >= fullLogInterval {
		l.log.Warn("challenge listener at its connection cap: refusing connections",
			"challenge", l.challenge, "address", l.Addr().String(), "cap", l.cap, "refused", l.fullN)
		l.fullLast, l.fullN = now, 0
	}
}

func remoteAddr(c net.Conn) netip.Addr {
	if t, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return t.AddrPort().Addr().Unmap()
	}
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	return ap.Addr().Unmap()
}

// challengeConn gives its slot and its admission back on the first Close.
type challengeConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *challengeConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
