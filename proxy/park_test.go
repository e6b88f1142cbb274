//go:build linux

package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/proxy"
)

// waitParked waits until at least want relay directions are parked without
// a goroutine (a direction parks after a second without a byte).
func waitParked(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for proxy.ParkedRelays() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%d relay directions parked after 10s, want %d", proxy.ParkedRelays(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitGoroutines waits until the process runs at most max goroutines.
func waitGoroutines(t *testing.T, max int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= max {
			return n
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after 10s, want at most %d:\n%s", n, max, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// exchange sends size random bytes each way through a relayed session and
// checks they arrive unchanged.
func exchange(t *testing.T, tc *tls.Conn, be net.Conn, size int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tc.SetDeadline(deadline)
	be.SetDeadline(deadline)
	defer tc.SetDeadline(time.Time{})
	defer be.SetDeadline(time.Time{})
	for _, dir := range []struct {
		name string
		w, r net.Conn
	}{{"client to backend", tc, be}, {"backend to client", be, tc}} {
		sent := make([]byte, size)
		rand.Read(sent)
		if _, err := dir.w.Write(sent); err != nil {
			t.Fatalf("%s: write: %v", dir.name, err)
		}
		got := make([]byte, size)
		if _, err := io.ReadFull(dir.r, got); err != nil {
			t.Fatalf("%s: read: %v", dir.name, err)
		}
		if !bytes.Equal(got, sent) {
			t.Fatalf("%s: %d bytes arrived changed", dir.name, size)
		}
	}
}

// countLines counts the gateway's log lines holding msg.
func countLines(g *gateway, msg string) int {
	return strings.Count(g.logs.String(), "msg=\""+msg+"\"")
}

// waitLine waits for the gateway to log a line holding msg.
func waitLine(t *testing.T, g *gateway, msg string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for countLines(g, msg) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no %q line after 10s", msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestParkIdleSessions: idle relayed sessions hold no goroutine. A few
// hundred sessions through a real gateway park both directions within
// seconds, the goroutine count falls back to the gateway's own, and after a
// long park each session still relays bytes exactly, both ways, parks again,
// and ends without leaving a goroutine behind.
func TestParkIdleSessions(t *testing.T) {
	const n = 200
	b := startScripted(t)
	// No warm connections: the scripted backend's goroutines serving them
	// would blur the count of the gateway's own.
	g := startGateway(t, b.ln.Addr().String(), func(c *conf.Config) { c.Backend.WarmConnections = 0 })
	base := runtime.NumGoroutine()
	type session struct {
		tc *tls.Conn
		be net.Conn
	}
	ss := make([]session, n)
	for i := range ss {
		tc, _, be := relayed(t, g, b)
		ss[i] = session{tc, be}
	}
	start := time.Now()
	waitParked(t, 2*n)
	got := waitGoroutines(t, base+4) // the parker's and the scripted backend's come and go
	t.Logf("MEASURED: %d sessions parked %v after the last login; goroutines %d before them, %d with them parked",
		n, time.Since(start).Round(time.Millisecond), base, got)

	if v := unlabeled(t, g.reg, "imapgw_relay_parked"); v < 2*n {
		t.Errorf("imapgw_relay_parked = %v with %d sessions parked, want at least %d", v, n, 2*n)
	}

	// A long park: several sweeps go by without waking anyone.
	time.Sleep(2 * time.Second)
	if p := proxy.ParkedRelays(); p < 2*n {
		t.Fatalf("%d directions parked after 2 quiet seconds, want %d", p, 2*n)
	}
	for i, s := range ss {
		exchange(t, s.tc, s.be, 1000+i*97) // up to ~20 KB: more than one TLS record
	}
	// Quiet again: they park again.
	waitParked(t, 2*n)
	waitGoroutines(t, base+4)

	for _, s := range ss {
		s.tc.Close()
		s.be.Close()
	}
	waitNoSessions(t, g)
	if v := unlabeled(t, g.reg, "imapgw_relay_parked"); v != 0 {
		t.Errorf("imapgw_relay_parked = %v once every session ended, want 0", v)
	}
	if ended := countLines(g, "session ended"); ended != n {
		t.Errorf("%d \"session ended\" lines, want %d", ended, n)
	}
	if p := proxy.ParkedRelays(); p != 0 {
		t.Errorf("%d directions still parked after every session ended", p)
	}
	settleGoroutines(t, base, 0)
}

// TestParkIdleTimeout: a parked session still ends at idle_timeout: the
// parker's sweep finds the deadline passed while nothing runs for it.
func TestParkIdleTimeout(t *testing.T) {
	const idle = 3 * time.Second
	b := startScripted(t)
	g := startGateway(t, b.ln.Addr().String(), func(c *conf.Config) { c.Limits.IdleTimeout = conf.D(idle) })
	tc, _, be := relayed(t, g, b)
	start := time.Now()
	waitParked(t, 2)
	parkedAt := time.Since(start)
	d := closedAfter(tc, 10*time.Second)
	if d < 0 {
		t.Fatal("the client is still connected 10s after parking")
	}
	took := time.Since(start)
	if d := closedAfter(be, 2*time.Second); d < 0 {
		t.Error("the backend is still connected")
	}
	t.Logf("MEASURED: parked after %v, closed %v after the login (idle_timeout %v)", parkedAt.Round(time.Millisecond), took.Round(time.Millisecond), idle)
	// The deadline is idle_timeout plus its refresh interval after the last
	// byte; the sweep runs twice a second.
	if took < idle-50*time.Millisecond || took > idle+1500*time.Millisecond {
		t.Errorf("closed %v after the last byte, want idle_timeout %v (up to a refresh interval and a sweep later)", took, idle)
	}
	waitNoSessions(t, g)
	if n := countLines(g, "session ended"); n != 1 {
		t.Errorf("%d \"session ended\" lines, want 1", n)
	}
}

// TestParkPeerEnds: whichever way a peer leaves a parked session (a FIN, a
// reset, a half-close the other side never answers) the session ends as it
// does without parking, and is logged as ended once.
func TestParkPeerEnds(t *testing.T) {
	rst := func(c net.Conn) {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	cases := []struct {
		name string
		act  func(tc *tls.Conn, raw net.Conn, be net.Conn) // ends the session from one side
		// seen is the connection that must then see the end, and then does
		// what its application would.
		seen   func(tc *tls.Conn, be net.Conn) net.Conn
		then   func(tc *tls.Conn, be net.Conn)
		within time.Duration // the session is over this long after act
		by     string        // who the log says ended it, when that is certain
	}{
		{name: "backend closes", by: "closed_by=backend", within: 2 * time.Second,
			act:  func(tc *tls.Conn, raw, be net.Conn) { be.Close() },
			seen: func(tc *tls.Conn, be net.Conn) net.Conn { return tc },
			then: func(tc *tls.Conn, be net.Conn) { tc.Close() }}, // close_notify seen: the client closes too
		{name: "backend resets", within: 2 * time.Second,
			act:  func(tc *tls.Conn, raw, be net.Conn) { rst(be) },
			seen: func(tc *tls.Conn, be net.Conn) net.Conn { return tc }},
		{name: "client resets", within: 2 * time.Second,
			act:  func(tc *tls.Conn, raw, be net.Conn) { rst(raw) },
			seen: func(tc *tls.Conn, be net.Conn) net.Conn { return be }},
		{name: "client half-closes, backend silent", by: "closed_by=client", within: 8 * time.Second,
			// The backend gets EOF at once; the half-close grace (5s) then
			// closes both sides, waking the parked backend-to-client direction.
			act:  func(tc *tls.Conn, raw, be net.Conn) { tc.CloseWrite() },
			seen: func(tc *tls.Conn, be net.Conn) net.Conn { return be }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := startScripted(t)
			g := startGateway(t, b.ln.Addr().String(), nil)
			tc, rec, be := relayed(t, g, b)
			waitParked(t, 2)
			start := time.Now()
			c.act(tc, rec.Conn, be)
			if closedAfter(c.seen(tc, be), 2*time.Second) < 0 {
				t.Fatal("the other side saw no end 2s later")
			}
			if c.then != nil {
				c.then(tc, be)
			}
			deadline := start.Add(c.within)
			for len(g.srv.Sessions()) > 0 {
				if time.Now().After(deadline) {
					t.Fatalf("the session is still there %v later", c.within)
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Logf("MEASURED: the session ended %v later", time.Since(start).Round(time.Millisecond))
			waitLine(t, g, "session ended")
			logs := g.logs.String()
			if n := countLines(g, "session ended"); n != 1 || !strings.Contains(logs, c.by) {
				t.Errorf("%d \"session ended\" lines, want 1 with %q:\n%s", n, c.by, logs)
			}
		})
	}
}

// TestParkKickAndDrain: the operator's kick (drain with kick) and the end of
// a shutdown's drain close parked sessions at once, as they close running ones.
func TestParkKickAndDrain(t *testing.T) {
	b := startScripted(t)
	g := startGateway(t, b.ln.Addr().String(), func(c *conf.Config) { c.Server.DrainTimeout = conf.D(time.Second) })
	base := runtime.NumGoroutine()
	tc, _, be := relayed(t, g, b)
	waitParked(t, 2)
	name := g.pool.Servers()[0].Name
	if err := g.pool.Drain(name, true); err != nil {
		t.Fatalf("Drain(%s, kick) = %v", name, err)
	}
	if closedAfter(tc, 2*time.Second) < 0 || closedAfter(be, 2*time.Second) < 0 {
		t.Fatal("a kicked parked session is still connected 2s later")
	}
	waitNoSessions(t, g)
	if n := countLines(g, "session ended"); n != 1 || !strings.Contains(g.logs.String(), "closed_by=gateway") {
		t.Errorf("%d \"session ended\" lines, want 1 with closed_by=gateway:\n%s", n, g.logs.String())
	}
	if err := g.pool.Undrain(name); err != nil {
		t.Fatal(err)
	}

	// Shutdown: the session may go on for drain_timeout, parked, and is then closed.
	tc, _, be = relayed(t, g, b)
	waitParked(t, 2)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g.srv.Shutdown(ctx)
	took := time.Since(start)
	if took > 3*time.Second {
		t.Errorf("Shutdown took %v with a parked session, want about drain_timeout (1s)", took)
	}
	if closedAfter(tc, 2*time.Second) < 0 || closedAfter(be, 2*time.Second) < 0 {
		t.Fatal("a parked session is still connected after Shutdown")
	}
	if n := countLines(g, "session ended"); n != 2 {
		t.Errorf("%d \"session ended\" lines, want 2", n)
	}
	t.Logf("MEASURED: Shutdown took %v", took.Round(time.Millisecond))
	settleGoroutines(t, base, 0)
}

// goroutinesWith counts the goroutines whose stack holds every one of frames.
func goroutinesWith(frames ...string) int {
	buf := make([]byte, 4<<20)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		all := true
		for _, f := range frames {
			all = all && strings.Contains(g, f)
		}
		if all {
			n++
		}
	}
	return n
}

// waitGoroutinesWith waits up to 5s for want goroutines with every one of
// frames (a relay starts just after the client reads OK) and returns the count.
func waitGoroutinesWith(want int, frames ...string) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := goroutinesWith(frames...)
		if n == want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Frames of the goroutines the relay runs on.
const (
	frameWorker          = "proxy.(*Server).worker"
	frameBackendToClient = "proxy.(*relay).backendToClient"
	frameClientToBackend = "proxy.(*relay).clientToBackend"
)

// TestRelayOnSessionGoroutine: after a login the backend's direction runs on
// the goroutine that ran the handshake and the login (one goroutine fewer to
// start per login), the client's on another worker (whose stack needs no
// growing); once the session is quiet and parks, both are free for the next
// session, and the relay, woken, still moves bytes exactly both ways on
// workers.
func TestRelayOnSessionGoroutine(t *testing.T) {
	b := startScripted(t)
	g := startGateway(t, b.ln.Addr().String(), nil)
	tc, _, be := relayed(t, g, b)

	if n := waitGoroutinesWith(1, frameWorker, frameBackendToClient); n != 1 {
		buf := make([]byte, 1<<20)
		t.Errorf("%d session goroutines running the backend's direction after the login, want 1:\n%s", n, buf[:runtime.Stack(buf, true)])
	}
	if n := waitGoroutinesWith(1, frameClientToBackend); n != 1 || goroutinesWith(frameWorker, frameClientToBackend) != 1 {
		t.Errorf("%d goroutines run the client's direction (on a worker: %d), want 1 on a worker",
			n, goroutinesWith(frameWorker, frameClientToBackend))
	}
	exchange(t, tc, be, 50_000)

	waitParked(t, 2)
	if n := goroutinesWith(frameBackendToClient) + goroutinesWith(frameClientToBackend); n != 0 {
		t.Errorf("%d goroutines still run a direction of a parked session", n)
	}
	// The freed worker takes the next session's handshake.
	tc2, _, be2 := relayed(t, g, b)
	exchange(t, tc2, be2, 1000)
	exchange(t, tc, be, 50_000) // the parked one, woken: on workers again
	if n, w := goroutinesWith(frameBackendToClient)+goroutinesWith(frameClientToBackend),
		goroutinesWith(frameWorker, frameBackendToClient)+goroutinesWith(frameWorker, frameClientToBackend); n != w {
		t.Errorf("%d goroutines run a direction, %d of them workers: want all on workers", n, w)
	}
}

// TestBackendKeepAliveWhenQuiet: the gateway dials the backend without TCP
// keep-alive and sets it when the session's backend direction first parks:
// a login that is over within a second makes no setsockopt for it, and a
// session that stays has keep-alive watching the backend while it is quiet.
// The kernel shows it: /proc/net/tcp reports an armed keep-alive timer.
func TestBackendKeepAliveWhenQuiet(t *testing.T) {
	b := startScripted(t)
	g := startGateway(t, b.ln.Addr().String(), nil)
	tc, _, be := relayed(t, g, b)
	// The gateway's socket to the backend is be's peer.
	gw, backend := be.RemoteAddr().String(), be.LocalAddr().String()
	if timer := tcpTimer(t, gw, backend); timer == timerKeepAlive {
		t.Errorf("the gateway's backend socket has keep-alive right after the login, want it only once the session is quiet")
	}
	waitParked(t, 2)
	if timer := tcpTimer(t, gw, backend); timer != timerKeepAlive {
		t.Errorf("the gateway's backend socket of a parked session has timer %d, want keep-alive (%d)", timer, timerKeepAlive)
	}
	exchange(t, tc, be, 1000) // and the session still relays
}

// timerKeepAlive is /proc/net/tcp's timer_active for a pending keep-alive
// timer (the socket's sk_timer; 1 is a retransmit, 4 a zero-window probe).
const timerKeepAlive = 2

// tcpTimer returns the timer_active of the IPv4 socket from local to remote
// ("127.0.0.1:port" both), as /proc/net/tcp reports it.
func tcpTimer(t *testing.T, local, remote string) int {
	t.Helper()
	l, r := procAddr(local), procAddr(remote)
	for _, so := range tcpSockets(t) {
		if so.local == l && so.remote == r {
			return so.timer
		}
	}
	t.Fatalf("no socket from %s to %s in /proc/net/tcp", local, remote)
	return 0
}

// keepAliveTo counts the established IPv4 sockets to remote whose
// keep-alive timer is armed.
func keepAliveTo(t *testing.T, remote string) int {
	t.Helper()
	r, n := procAddr(remote), 0
	for _, so := range tcpSockets(t) {
		if so.remote == r && so.state == "01" && so.timer == timerKeepAlive {
			n++
		}
	}
	return n
}

// procAddr spells "127.0.0.1:port" as /proc/net/tcp does.
func procAddr(a string) string {
	ap := netip.MustParseAddrPort(a)
	ip := ap.Addr().As4()
	return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ap.Port())
}

type tcpSocket struct {
	local, remote, state string
	timer                int
}

// tcpSockets reads /proc/net/tcp.
func tcpSockets(t *testing.T) []tcpSocket {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	var out []tcpSocket
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		timer, err := strconv.ParseInt(strings.SplitN(f[5], ":", 2)[0], 16, 0)
		if err != nil {
			t.Fatalf("/proc/net/tcp: %q: %v", line, err)
		}
		out = append(out, tcpSocket{local: f[1], remote: f[2], state: f[3], timer: int(timer)})
	}
	return out
}

// TestRelayUnparkableOwnGoroutine: a direction that cannot park (a TLS
// backend's, read through crypto/tls) runs on a goroutine of its own, never
// on the session's: it would otherwise keep the handshake's grown stack for
// the session's whole life.
func TestRelayUnparkableOwnGoroutine(t *testing.T) {
	e := startExchange(t, true)
	g := startGateway(t, "", exchangeBackend(t, e, conf.TLSImplicit))
	tc, err := tls.Dial("tcp", g.implicit, g.clientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(tc)
	for _, step := range []struct{ send, want string }{{"", "* OK"}, {"a LOGIN alice alice-secret\r\n", "a OK"}} {
		io.WriteString(tc, step.send)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("after %q: %v", step.send, err)
			}
			if strings.HasPrefix(line, step.want) {
				break
			}
		}
	}
	if n := waitGoroutinesWith(1, frameBackendToClient); n != 1 {
		t.Errorf("%d goroutines run the backend's direction, want 1", n)
	}
	if n := goroutinesWith(frameWorker, frameBackendToClient); n != 0 {
		t.Errorf("the TLS backend's direction runs on the session's worker goroutine (%d)", n)
	}
	io.WriteString(tc, "b NOOP\r\n")
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "b OK") {
		t.Fatalf("NOOP through the relay: %q, %v", line, err)
	}
	// A direction that cannot park never gets to set keep-alive at its
	// park: the relay sets it at once. Of the gateway's sockets to the
	// backend, the warm ones have none; the relayed one has it.
	if n := keepAliveTo(t, e.TLSAddr); n != 1 {
		t.Errorf("%d established sockets to the TLS backend have keep-alive, want 1 (the relayed session's)", n)
	}
}
