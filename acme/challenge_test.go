package acme

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/imapgw/imapgw/internal/pebbletest"
)

func TestChallengeCap(t *testing.T) {
	cases := []struct {
		nofile uint64
		want   int
	}{
		{0, 256},       // unknown
		{1 << 20, 256}, // systemd's usual hard limit
		{1024, 128},
		{256, 32},
		{64, 16},
	}
	for _, tc := range cases {
		if got := challengeCap(tc.nofile); got != tc.want {
			t.Errorf("challengeCap(%d) = %d, want %d", tc.nofile, got, tc.want)
		}
	}
}

// admission is an Options.Admit that refuses one address and counts what it
// admits and releases, as the limiter would.
type admission struct {
	refuse netip.Addr
	mu     sync.Mutex
	from   map[netip.Addr]int // admitted, by source
	open   int
}

func (a *admission) admit(src netip.Addr) (func(), error) {
	if src == a.refuse {
		return func() {}, errors.New("source is banned")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.from == nil {
		a.from = map[netip.Addr]int{}
	}
	a.from[src]++
	a.open++
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			a.open--
			a.mu.Unlock()
		})
	}, nil
}

func (a *admission) counts(src netip.Addr) (admitted, open int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.from[src], a.open
}

// TestACMEHTTP01ChallengeLimits: Pebble's validations pass the admission
// (127.0.0.1 is not allow-listed here: there is no allow list at this
// level) and get a certificate; then the listener resets a refused source's
// connection at once, holds at most its cap of idle connections, resets
// those over the cap at once, closes idle and slow-header connections after challengeTimeout,
// answers an oversized head with 431, and gives every slot back.
func TestACMEHTTP01ChallengeLimits(t *testing.T) {
	t.Parallel()
	const capacity = 8
	host := "mail." + domain("limits")
	port := pebbletest.FreePort(t)
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port})
	log, _ := newLogger(t)
	reg := prometheus.NewRegistry()
	adm := &admission{refuse: netip.MustParseAddr("127.0.0.66")}
	m, err := New(acmeConfig(t, p, host, port, 0), fastRetries(Options{
		Logger: log, Registerer: reg, Admit: adm.admit, ChallengeConnections: capacity,
	}))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	startManager(t, m)
	waitFor(t, 30*time.Second, "a certificate from Pebble through the admission", m.Ready)
	loop := netip.MustParseAddr("127.0.0.1")
	if n, _ := adm.counts(loop); n == 0 {
		t.Errorf("no challenge connection from 127.0.0.1 went through Admit; want Pebble's validations admitted by it")
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	waitFor(t, 5*time.Second, "every validation connection released", func() bool { _, open := adm.counts(loop); return open == 0 })

	// a source Admit refuses: reset at once
	if !closedAtOnce(t, "127.0.0.66", addr) {
		t.Errorf("a connection from a source refused by Admit still open after 1s; want it closed at once")
	}
	if got := challengeCount(t, reg, challengeHTTP, outcomeRefusedPolicy); got != 1 {
		t.Errorf(`challenge connections {outcome="refused_policy"} = %v, want 1`, got)
	}

	start := time.Now()
	held := dialIdle(t, "127.0.0.1", addr, capacity-1)
	held = append(held, slowHeader(t, addr))
	waitFor(t, 2*time.Second, "the idle connections accepted", func() bool {
		_, open := adm.counts(loop)
		return open == capacity
	})
	// over the cap: reset at once
	full := challengeCount(t, reg, challengeHTTP, outcomeRefusedFull)
	for range 3 {
		if !closedAtOnce(t, "127.0.0.1", addr) {
			t.Errorf("a connection with the listener full still open after 1s; want it closed at once")
		}
	}
	if got := challengeCount(t, reg, challengeHTTP, outcomeRefusedFull) - full; got != 3 {
		t.Errorf(`challenge connections {outcome="refused_full"} went up by %v, want 3`, got)
	}
	if _, open := adm.counts(loop); open != capacity {
		t.Errorf("admitted and open with the listener full = %d, want %d", open, capacity)
	}
	if got := challengeCount(t, reg, challengeHTTP, outcomeRefusedPolicy); got != 1 {
		t.Errorf(`challenge connections {outcome="refused_policy"} = %v, want 1`, got)
	}
	// the held ones (one of them sending its head a byte at a time) are
	// closed by the server after challengeTimeout
	for i, c := range held {
		d := closedWithin(c, challengeTimeout+3*time.Second)
		if d < 0 || time.Since(start) < challengeTimeout-time.Second {
			t.Errorf("held connection %d: closed after %v (-1: still open), want about %v", i, time.Since(start), challengeTimeout)
		}
	}
	waitFor(t, 2*time.Second, "every slot given back", func() bool { _, open := adm.counts(loop); return open == 0 })

	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET / once the slots are free: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET / once the slots are free: status %d, want 404", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", "http://"+addr+"/.well-known/acme-challenge/x", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 2*challengeMaxHeader+1024))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("a %d-byte head: status %d, want 431", 2*challengeMaxHeader+1024, resp.StatusCode)
		}
	} // an error (reset while writing) is a refusal too
}

// TestACMETLSALPN01ChallengeLimits: the TLS-ALPN-01 listener passes
// Pebble's validation through the admission, holds at most its cap and
// closes a silent connection after challengeTimeout.
func TestACMETLSALPN01ChallengeLimits(t *testing.T) {
	t.Parallel()
	const capacity = 4
	host := "mail." + domain("alpnlimits")
	port := pebbletest.FreePort(t)
	p := pebbletest.Start(t, pebbletest.Options{TLSPort: port})
	log, _ := newLogger(t)
	reg := prometheus.NewRegistry()
	adm := &admission{}
	m, err := New(acmeConfig(t, p, host, 0, port), fastRetries(Options{
		Logger: log, Registerer: reg, Admit: adm.admit, ChallengeConnections: capacity,
	}))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	startManager(t, m)
	waitFor(t, 30*time.Second, "a certificate from Pebble over TLS-ALPN-01 through the admission", m.Ready)
	loop := netip.MustParseAddr("127.0.0.1")
	if n, _ := adm.counts(loop); n == 0 {
		t.Errorf("no TLS-ALPN-01 connection went through Admit")
	}
	waitFor(t, 5*time.Second, "every validation connection released", func() bool { _, open := adm.counts(loop); return open == 0 })

	addr := "127.0.0.1:" + strconv.Itoa(port)
	start := time.Now()
	held := dialIdle(t, "127.0.0.1", addr, capacity)
	waitFor(t, 2*time.Second, "the idle connections accepted", func() bool {
		_, open := adm.counts(loop)
		return open == capacity
	})
	full := challengeCount(t, reg, challengeALPN, outcomeRefusedFull)
	if !closedAtOnce(t, "127.0.0.1", addr) {
		t.Errorf("a connection over the cap still open after 1s; want it closed at once")
	}
	if got := challengeCount(t, reg, challengeALPN, outcomeRefusedFull) - full; got != 1 {
		t.Errorf(`challenge connections {challenge="tls-alpn-01", outcome="refused_full"} went up by %v, want 1`, got)
	}
	for i, c := range held {
		if d := closedWithin(c, challengeTimeout+3*time.Second); d < 0 || time.Since(start) < challengeTimeout-time.Second {
			t.Errorf("silent connection %d: closed after %v (-1: still open), want about %v", i, time.Since(start), challengeTimeout)
		}
	}
	waitFor(t, 2*time.Second, "every slot given back", func() bool { _, open := adm.counts(loop); return open == 0 })
}

// dialIdle opens n connections from the local address from to addr and
// sends nothing; they are closed when the test ends.
func dialIdle(t *testing.T, from, addr string, n int) []net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	var cs []net.Conn
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dialing %s from %s: %v", addr, from, err)
		}
		t.Cleanup(func() { c.Close() })
		cs = append(cs, c)
	}
	return cs
}

// closedAtOnce dials addr from the local address from and reports whether
// the server closed the connection within a second (a reset can already
// fail the connect).
func closedAtOnce(t *testing.T, from, addr string) bool {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return true
	}
	if err != nil {
		t.Fatalf("dialing %s from %s: %v", addr, from, err)
	}
	defer c.Close()
	return closedWithin(c, time.Second) >= 0
}

// slowHeader opens a connection that sends a request head one byte every
// 200ms, never finishing it, until the server closes the connection.
func slowHeader(t *testing.T, addr string) net.Conn {
	t.Helper()
	c := dialIdle(t, "127.0.0.1", addr, 1)[0]
	head := "GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 1000)
	go func() {
		for i := 0; i < len(head); i++ {
			if _, err := c.Write([]byte{head[i]}); err != nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	return c
}

// closedWithin waits up to d for the server to close c (EOF or reset; an
// HTTP error answer before it is read and skipped) and returns how long it
// took, or -1 if c is still open.
func closedWithin(c net.Conn, d time.Duration) time.Duration {
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(d))
	_, err := io.Copy(io.Discard, bufio.NewReader(c))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return -1
	}
	return time.Since(start)
}

// challengeCount reads imapgw_acme_challenge_connections_total{challenge,
// outcome}, 0 when the series does not exist yet.
func challengeCount(t *testing.T, reg *prometheus.Registry, challenge, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "imapgw_acme_challenge_connections_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label(m, "challenge") == challenge && label(m, "outcome") == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
