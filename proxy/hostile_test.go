package proxy_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

// TestSlowloris: clients trickling one byte well within preauth_timeout, on
// every pre-auth read path, are all closed preauth_timeout after the line
// began (issue 10.2); one sending whole commands well within preauth_timeout is
// closed once the pre-auth lifetime (five preauth_timeouts) is over; an honest
// client logs in meanwhile. A per-read deadline would hold them all until the
// lifetime bound, and without it forever.
func TestSlowloris(t *testing.T) {
	const preauth = time.Second // ticks of preauth/3 keep a margin on a loaded machine
	const lifetime = 5 * preauth
	be := startDemo(t)
	g := startGateway(t, be.Addr, func(c *conf.Config) { c.Limits.PreauthTimeout = conf.D(preauth) })
	cases := []struct {
		name     string
		starttls bool
		opening  string // sent at once
		trickle  string // then one byte of it per tick, over and over
		whole    bool   // the whole of trickle per tick
		want     time.Duration
	}{
		{"command line", false, "a LOGIN ", "a", false, preauth},
		{"inside a literal", false, "a LOGIN {4000}\r\n", "a", false, preauth},
		{"SASL continuation", false, "a AUTHENTICATE PLAIN\r\n", "a", false, preauth},
		{"after STARTTLS", true, "a ", "a", false, preauth},
		{"whole commands, one byte at a time", false, "", "a NOOP\r\n", false, preauth},
		{"whole commands, slowly", false, "", "a NOOP\r\n", true, lifetime},
	}
	// All trickle at once: the gateway serves them side by side.
	var wg sync.WaitGroup
	clients := make([]*rawClient, len(cases))
	starts := make([]time.Time, len(cases))
	for i, tc := range cases {
		var c *rawClient
		if tc.starttls {
			c = dialRaw(t, g.starttls, nil)
			greeting(t, c)
			c.starttls(g.clientTLS())
		} else {
			c = dialRaw(t, g.implicit, g.clientTLS())
			greeting(t, c)
		}
		clients[i], starts[i] = c, time.Now()
		c.send(tc.opening)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if tc.whole {
				trickleLines(c.conn, tc.trickle, preauth/3, 3*lifetime)
			} else {
				trickle(c.conn, []byte(tc.trickle), preauth/3, 3*lifetime)
			}
		}()
	}
	assertServes(t, g)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			closedWithin(t, clients[i].conn, 3*lifetime)
			if d := time.Since(starts[i]); d < tc.want-preauth/2 || d > tc.want+time.Second {
				t.Errorf("a trickling client was closed after %v, want about %v", d, tc.want)
			}
		})
	}
	// The TLS handshake is bounded as a whole by preauth_timeout.
	for _, starttls := range []bool{false, true} {
		t.Run(fmt.Sprintf("TLS handshake, STARTTLS %v", starttls), func(t *testing.T) {
			conn := handshakeConn(t, g, starttls)
			start := time.Now()
			go trickle(conn, clientHello(t), preauth/4, 3*lifetime)
			closedWithin(t, conn, 3*lifetime)
			if d := time.Since(start); d < preauth-preauth/4 || d > preauth+time.Second {
				t.Errorf("a client trickling its ClientHello was closed after %v, want about preauth_timeout %v", d, preauth)
			}
		})
	}
	wg.Wait()
	assertServes(t, g)
}

// TestSilentFlood: 2,000 silent connections against max_connections = 1,000.
// Those over the cap are closed at accept, before any TLS; the others are
// reclaimed after preauth_timeout; then the gateway serves again and its
// goroutines are back to where they were.
//
// On a loaded machine dialling 2,000 connections can take longer than
// preauth_timeout, and then the first sessions' slots are legitimately free
// again for the last dials. So the cap is checked on the connections dialled
// before the first session could expire (the first window), where at most
// max_connections may be held open, and over the whole flood as "never more
// than max_connections sessions at once".
func TestSilentFlood(t *testing.T) {
	const conns, maxConns = 2000, 1000
	const preauth = 2 * time.Second
	be := startDemo(t)
	g := startGateway(t, be.Addr, func(c *conf.Config) {
		c.Limits.PreauthTimeout = conf.D(preauth)
		c.Limits.MaxConnections = maxConns
	})
	base := runtime.NumGoroutine()
	start := time.Now()
	window := preauth * 3 / 4 // dialled before any session can have expired
	var early, late, stuck, windowDials, windowHeld atomic.Int32
	var maxSeen atomic.Int64
	stopWatch := make(chan struct{})
	watched := make(chan struct{})
	go func() { // the cap holds at every moment of the flood
		defer close(watched)
		for {
			if n := int64(len(g.srv.Sessions())); n > maxSeen.Load() {
				maxSeen.Store(n)
			}
			select {
			case <-stopWatch:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	for i := 0; i < conns; i++ {
		addr := g.implicit
		if i%2 == 1 {
			addr = g.starttls // greeted, then silent
		}
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		inWindow := time.Since(start) < window
		if inWindow {
			windowDials.Add(1)
		}
		if err != nil {
			if !isReset(err) { // refused at accept with a reset
				t.Fatalf("dial %d: %v", i, err)
			}
			early.Add(1)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			switch d := closedAfter(conn, 5*preauth); {
			case d < 0:
				stuck.Add(1)
			case d < preauth/2:
				early.Add(1)
			default:
				late.Add(1)
				if inWindow {
					windowHeld.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(stopWatch)
	<-watched
	t.Logf("%d connections in %v: %d closed at once, %d after preauth_timeout, %d never; first window: %d dials, %d held; most sessions at once %d",
		conns, time.Since(start).Round(time.Millisecond), early.Load(), late.Load(), stuck.Load(), windowDials.Load(), windowHeld.Load(), maxSeen.Load())
	if stuck.Load() != 0 {
		t.Errorf("%d connections never closed, want 0", stuck.Load())
	}
	if windowHeld.Load() > maxConns {
		t.Errorf("%d of the %d connections dialled in the first %v were held until preauth_timeout, want at most max_connections %d",
			windowHeld.Load(), windowDials.Load(), window, maxConns)
	}
	if windowDials.Load() > maxConns && windowHeld.Load() < maxConns/2 {
		t.Errorf("only %d connections held in the first window, want the gateway to fill most of its %d slots", windowHeld.Load(), maxConns)
	}
	if maxSeen.Load() > maxConns {
		t.Errorf("%d sessions at once during the flood, want at most max_connections %d", maxSeen.Load(), maxConns)
	}
	waitNoSessions(t, g)
	settleGoroutines(t, base, 5)
	assertServes(t, g)
}

// TestUnfinishedTLSHandshake: handshakes that stop part-way are reclaimed
// after preauth_timeout, on the implicit listener and after STARTTLS.
func TestUnfinishedTLSHandshake(t *testing.T) {
	const preauth = 500 * time.Millisecond
	be := startDemo(t)
	g := startGateway(t, be.Addr, func(c *conf.Config) { c.Limits.PreauthTimeout = conf.D(preauth) })
	hello := clientHello(t)
	cases := []struct {
		name     string
		starttls bool
		send     []byte
	}{
		{"nothing", false, nil},
		{"half a ClientHello", false, hello[:len(hello)/2]},
		{"a whole ClientHello, then silence", false, hello},
		{"half a ClientHello after STARTTLS", true, hello[:len(hello)/2]},
		{"a whole ClientHello after STARTTLS", true, hello},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn := handshakeConn(t, g, tc.starttls)
			start := time.Now()
			conn.Write(tc.send)
			d := closedAfter(conn, 10*preauth)
			if d < 0 || time.Since(start) < preauth-50*time.Millisecond || time.Since(start) > preauth+time.Second {
				t.Errorf("closed after %v, want about preauth_timeout %v", time.Since(start), preauth)
			}
		})
	}
	assertServes(t, g)
}

// TestHalfClosedPreauth: a client that half-closes is answered for what it
// sent, then closed at once, not after preauth_timeout.
func TestHalfClosedPreauth(t *testing.T) {
	const preauth = 2 * time.Second
	be := startDemo(t)
	g := startGateway(t, be.Addr, func(c *conf.Config) { c.Limits.PreauthTimeout = conf.D(preauth) })

	t.Run("after commands", func(t *testing.T) {
		c := dialRaw(t, g.implicit, g.clientTLS())
		greeting(t, c)
		c.send("a NOOP\r\nb CAPABILITY\r\n")
		closeWrite(c.conn)
		start := time.Now()
		c.expect("a OK")
		c.expect("b OK")
		c.expectClosed()
		if d := time.Since(start); d > preauth/2 {
			t.Errorf("closed %v after the half-close, want at once", d)
		}
	})
	t.Run("before the TLS handshake", func(t *testing.T) {
		conn := dialPlainFrom(t, "127.0.0.1", g.implicit)
		conn.(*net.TCPConn).CloseWrite()
		if d := closedAfter(conn, 2*preauth); d < 0 || d > preauth/2 {
			t.Errorf("closed after %v, want at once", d)
		}
	})
	t.Run("login and commands, then half-close: nothing lost", func(t *testing.T) {
		c := dialRaw(t, g.implicit, g.clientTLS())
		greeting(t, c)
		c.send("a LOGIN alice alice-secret\r\nb SELECT INBOX\r\nc FETCH 1:* (FLAGS)\r\nd NOOP\r\n")
		closeWrite(c.conn)
		c.expect("a OK")
		c.until("b OK")
		c.until("c OK")
		c.until("d OK")
		c.expectClosed()
	})
	waitNoSessions(t, g)
	assertServes(t, g)
}

// TestClientNeverReads: a client that pipelines commands and never reads the
// replies cannot hold a session beyond the pre-auth lifetime. Once the socket
// buffers are full every reply write blocks until its preauth_timeout deadline;
// a session that went on reading after such a failure would spend one
// preauth_timeout per command already buffered (2 KB of "x CAPABILITY": 146
// commands, 73 minutes at the default 30 s) before its next socket read
// noticed the lifetime.
func TestClientNeverReads(t *testing.T) {
	const preauth = 500 * time.Millisecond
	const lifetime = 5 * preauth
	be := startDemo(t)
	g := startGateway(t, be.Addr, func(c *conf.Config) { c.Limits.PreauthTimeout = conf.D(preauth) })
	// Plain TCP on the STARTTLS listener: a timed-out write does not break the
	// connection as it would a *tls.Conn, so the client can go on writing.
	conn := dialPlainFrom(t, "127.0.0.1", g.starttls)
	flood := []byte(strings.Repeat("x CAPABILITY\r\n", 4096))
	start := time.Now()
	var err error
	for time.Since(start) < 2*lifetime {
		conn.SetWriteDeadline(time.Now().Add(preauth / 4))
		if _, err = conn.Write(flood); err != nil && !isTimeout(err) {
			break
		}
	}
	if d := time.Since(start); err == nil || isTimeout(err) || d > lifetime+preauth {
		t.Errorf("a client that never reads still had its session after %v (last write: %v), want it closed within the pre-auth lifetime %v", d.Round(time.Millisecond), err, lifetime)
	}
	conn.Close()
	assertServes(t, g)
}

// TestHugePipelineBoundedMemory: a 50 MB APPEND written without waiting for
// any reply, and a 50 MB FETCH answer, cross the relay with the gateway's heap
// growing by a small fraction of that, and arrive whole. The FETCH moves in
// jumbo chunks, whose two 1 MB buffers the session holds while it moves them
// (relay.go); with GOGC=100 garbage may grow as much again before a collection.
// Measured, with two CPU hogs beside the test (10 runs each): 2.8-3.6 MB with
// 256 KB chunks, up to 8.3 MB with jumbo chunks.
func TestHugePipelineBoundedMemory(t *testing.T) {
	const size = 50 << 20
	sink := startSink(t)
	g := startGateway(t, sink.addr, func(c *conf.Config) { c.Backend.ClientIP = conf.ClientIPNone })
	c := dialRaw(t, g.implicit, g.clientTLS())
	greeting(t, c)
	c.send("a LOGIN alice alice-secret\r\n")
	c.expect("a OK")

	base := heapInuse()
	peak := watchHeap()
	chunk := []byte(strings.Repeat("0123456789abcdef", 4096)) // 64 KB, reused
	c.send(fmt.Sprintf("b APPEND INBOX {%d+}\r\n", size))
	c.conn.SetWriteDeadline(time.Now().Add(time.Minute))
	for sent := 0; sent < size; sent += len(chunk) {
		if _, err := c.conn.Write(chunk[:min(len(chunk), size-sent)]); err != nil {
			t.Fatalf("APPEND data: %v", err)
		}
	}
	c.send("\r\nc FETCH 1 BODY[]\r\n")
	c.expect("b OK")
	if got := sink.appended.Load(); got != size {
		t.Errorf("the backend received %d bytes of the APPEND, want %d", got, size)
	}
	if l := c.line(); l != fmt.Sprintf("* 1 FETCH (BODY[] {%d}", size) {
		t.Fatalf("FETCH = %q", l)
	}
	c.conn.SetReadDeadline(time.Now().Add(time.Minute))
	if n, err := io.CopyN(io.Discard, c.br, size); n != size {
		t.Fatalf("FETCH literal: got %d bytes of %d: %v", n, size, err)
	}
	c.expect(")")
	c.expect("c OK")
	grew := peak() - base
	t.Logf("relayed %d MB each way; gateway heap in use grew by at most %.1f MB", size>>20, float64(grew)/(1<<20))
	if grew > 12<<20 {
		t.Errorf("heap in use grew by %d MB while relaying 2×%d MB, want under 12 MB", grew>>20, size>>20)
	}
}

// sink is a backend that accepts any login, counts the bytes of an APPEND
// without keeping them, and answers a FETCH with a literal of that size made
// on the fly, so the test's heap measures the gateway alone.
type sink struct {
	addr     string
	appended atomic.Int64
}

func startSink(t *testing.T) *sink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &sink{addr: ln.Addr().String()}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(conn)
		}
	}()
	return s
}

func (s *sink) serve(conn net.Conn) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	io.WriteString(conn, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR LITERAL+] sink ready\r\n")
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		tag, rest, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		verb, _, _ := strings.Cut(rest, " ")
		switch strings.ToUpper(verb) {
		case "AUTHENTICATE":
			fmt.Fprintf(conn, "%s OK [CAPABILITY IMAP4rev1 LITERAL+] Logged in\r\n", tag)
		case "APPEND":
			var n int64
			fmt.Sscanf(rest[strings.LastIndexByte(rest, '{'):], "{%d+}", &n)
			got, _ := io.CopyN(io.Discard, br, n)
			s.appended.Store(got)
			br.ReadString('\n')
			fmt.Fprintf(conn, "%s OK APPEND completed\r\n", tag)
		case "FETCH":
			n := s.appended.Load()
			fmt.Fprintf(conn, "* 1 FETCH (BODY[] {%d}\r\n", n)
			chunk := []byte(strings.Repeat("x", 64<<10))
			for left := n; left > 0; left -= int64(len(chunk)) {
				if _, err := conn.Write(chunk[:min(int64(len(chunk)), left)]); err != nil {
					return
				}
			}
			fmt.Fprintf(conn, ")\r\n%s OK FETCH completed\r\n", tag)
		default:
			fmt.Fprintf(conn, "%s OK %s completed\r\n", tag, verb)
		}
	}
}

// clientHello returns the first record a Go TLS client sends.
func clientHello(t *testing.T) []byte {
	t.Helper()
	cli, srv := net.Pipe()
	defer srv.Close()
	go tls.Client(cli, &tls.Config{ServerName: "localhost"}).Handshake()
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(srv, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(srv, body); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	return append(hdr, body...)
}

// trickle writes b one byte per every, starting over at its end, until a write
// fails or for at most total.
func trickle(conn net.Conn, b []byte, every, total time.Duration) {
	end := time.Now().Add(total)
	for i := 0; time.Now().Before(end); i++ {
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := conn.Write(b[i%len(b) : i%len(b)+1]); err != nil {
			return
		}
		time.Sleep(every)
	}
}

// trickleLines writes line whole every every, until a write fails or for at
// most total.
func trickleLines(conn net.Conn, line string, every, total time.Duration) {
	for end := time.Now().Add(total); time.Now().Before(end); time.Sleep(every) {
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := io.WriteString(conn, line); err != nil {
			return
		}
	}
}

// closedAfter reads and discards until conn is closed by the other side, and
// returns how long that took, or -1 if it is still open after limit.
func closedAfter(conn net.Conn, limit time.Duration) time.Duration {
	start := time.Now()
	conn.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return -1
	}
	return time.Since(start)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func closedWithin(t *testing.T, conn net.Conn, limit time.Duration) {
	t.Helper()
	if closedAfter(conn, limit) < 0 {
		t.Fatalf("the connection is still open after %v", limit)
	}
}

// assertServes logs in and runs a command through the gateway.
func assertServes(t *testing.T, g *gateway) {
	t.Helper()
	c := dialRaw(t, g.implicit, g.clientTLS())
	greeting(t, c)
	c.send("ok1 LOGIN alice alice-secret\r\nok2 SELECT INBOX\r\n")
	c.expect("ok1 OK")
	c.until("ok2 OK")
	c.conn.Close()
}

// waitNoSessions waits for every session to be gone.
func waitNoSessions(t *testing.T, g *gateway) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(g.srv.Sessions()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions left: %+v", len(g.srv.Sessions()), g.srv.Sessions()[0])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// settleGoroutines waits for the goroutine count to come back to base (plus
// slack, for runtime and test helpers that come and go).
func settleGoroutines(t *testing.T, base, slack int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base+slack {
			t.Logf("goroutines: %d before, %d after", base, n)
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines: %d before, %d after (slack %d):\n%s", base, n, slack, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func heapInuse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// watchHeap samples HeapInuse every 20 ms until the returned func is called,
// which returns the highest value seen.
func watchHeap() func() uint64 {
	var peak uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 { close(stop); <-done; return peak }
}

// handshakeConn is a raw connection where the client's TLS handshake comes
// next: on the implicit listener, or after STARTTLS was answered.
func handshakeConn(t *testing.T, g *gateway, starttls bool) net.Conn {
	t.Helper()
	if !starttls {
		return dialPlainFrom(t, "127.0.0.1", g.implicit)
	}
	c := dialRaw(t, g.starttls, nil)
	greeting(t, c)
	c.send("s STARTTLS\r\n")
	c.expect("s OK")
	return c.conn
}
