package proxy

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/limiter"
	proxyproto "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"
)

// keepAlive finds clients that vanished without a FIN (a phone leaving
// coverage) well before idle_timeout; these are Go's defaults.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 9}

type listener struct {
	ln       net.Listener
	srv      *Server
	cfg      atomic.Pointer[conf.Listen]
	accepted prometheus.Counter // imapgw_connections_total{listener=its address, outcome="accepted"}
}

func (l *listener) serve() {
	defer l.srv.wg.Done()
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = l.acceptFailed(err, backoff)
			continue
		}
		backoff = 0
		if l.cfg.Load().ProxyProtocol {
			if !l.fromTrustedProxy(c) {
				continue
			}
			// The header is read off the accept loop: a slow balancer must not
			// stall the others.
			go l.acceptProxied(c)
			continue
		}
		l.admit(c, c, addrPort(c.RemoteAddr()))
	}
}

// acceptFailed waits a little after EMFILE and friends instead of spinning,
// and returns the next wait.
func (l *listener) acceptFailed(err error, backoff time.Duration) time.Duration {
	backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
	l.srv.log.Warn("accept failed", "address", l.ln.Addr().String(), "err", err, "retry_in", backoff)
	time.Sleep(backoff)
	return backoff
}

// admit applies the connection limits before any TLS work and starts the session.
func (l *listener) admit(raw, c net.Conn, client netip.AddrPort) {
	release, err := l.srv.policy.Admit(client.Addr())
	if err != nil {
		// A reset rather than an orderly close: no FIN exchange, no TIME_WAIT,
		// the least work a refused (often flooding) source can cost.
		// Counted before the close: whoever sees the reset then sees the count.
		l.refused(client, err)
		if tc, ok := raw.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		raw.Close()
		return
	}
	l.start(raw, c, client, release)
}

// refused counts and (at debug level) logs a connection refused at accept.
func (l *listener) refused(client netip.AddrPort, err error) {
	addr := l.cfg.Load().Address
	l.srv.m.connections.WithLabelValues(addr, refusalOutcome(err)).Inc()
	if l.srv.log.Enabled(context.Background(), slog.LevelDebug) {
		l.srv.log.Debug("connection refused", "client", client.String(), "listener", addr, "reason", err.Error())
	}
}

// start runs a session on an admitted connection. Keep-alive comes from the
// listener (Linux) or is set here: refused connections need no setsockopt calls.
func (l *listener) start(raw, c net.Conn, client netip.AddrPort, release func()) {
	if tc, ok := raw.(*net.TCPConn); ok && !inheritsKeepAlive {
		tc.SetKeepAliveConfig(keepAlive)
	}
	lc := l.cfg.Load()
	l.accepted.Inc()
	ss := newSession(l.srv, lc, raw, c, client, release)
	if !l.srv.track(ss) {
		raw.Close()
		release()
		return
	}
	l.srv.spawn(ss.runSession)
}

func refusalOutcome(err error) string {
	switch {
	case errors.Is(err, limiter.ErrBanned):
		return "refused_ban"
	case errors.Is(err, limiter.ErrRate):
		return "refused_rate"
	default:
		return "refused_limit"
	}
}

// untrustedLogEvery spaces the log lines about one untrusted peer.
const untrustedLogEvery = time.Minute

// fromTrustedProxy reports whether a connection to a proxy_protocol listener
// comes from server.trusted_proxies. Any other peer is reset in the accept
// loop, before a goroutine or a read (issue 11.7): it is counted every time
// and logged once a minute per peer, so `while :; do nc -z gw 993; done` costs
// a counter, not a log line and a goroutine per connection.
func (l *listener) fromTrustedProxy(c net.Conn) bool {
	peer := addrPort(c.RemoteAddr()).Addr()
	if containsAddr(l.srv.Config().Server.TrustedProxies, peer) {
		return true
	}
	addr := l.cfg.Load().Address
	l.srv.m.connections.WithLabelValues(addr, outcomeUntrustedProxy).Inc() // before the close, as in admit
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0) // as for other refusals: no FIN exchange, no TIME_WAIT
	}
	c.Close()
	if log, n := l.srv.untrusted.note(peer, time.Now()); log {
		l.srv.log.Warn("connections from a peer not in server.trusted_proxies to a proxy_protocol listener: closed",
			"peer", peer.String(), "listener", addr, "connections", n)
	}
	return false
}

// outcomeUntrustedProxy is the imapgw_connections_total outcome of such a peer.
const outcomeUntrustedProxy = "refused_untrusted_proxy"

// acceptProxied reads an inbound PROXY v1/v2 header from a trusted proxy; a
// connection without a valid one is closed.
func (l *listener) acceptProxied(c net.Conn) {
	peer := addrPort(c.RemoteAddr())
	cfg := l.srv.Config()
	c.SetReadDeadline(time.Now().Add(cfg.Limits.PreauthTimeout.Duration))
	br := bufio.NewReaderSize(c, 4096+256)
	h, err := proxyproto.Read(br)
	if err != nil {
		l.srv.log.Warn("bad or missing PROXY header: closed", "peer", peer.String(), "err", err)
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	client := peer
	if src, ok := h.SourceAddr.(*net.TCPAddr); ok && h.Command.IsProxy() {
		client = src.AddrPort()
	}
	l.admit(c, withPrefix(c, br), unmap(client))
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		return unmap(t.AddrPort())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return unmap(ap)
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// prefixConn returns bytes a bufio.Reader read ahead of the PROXY header before
// reading from the socket again.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func withPrefix(c net.Conn, br *bufio.Reader) net.Conn {
	n := br.Buffered()
	if n == 0 {
		return c
	}
	b, _ := br.Peek(n)
	return &prefixConn{Conn: c, prefix: append([]byte(nil), b...)}
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// pending reports bytes held above the socket, for the relay's readiness wait.
func (p *prefixConn) pending() int { return len(p.prefix) }
