package loadgen

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imapgw/imapgw/bench/backend"
)

const (
	user = "bench"
	pass = "secret"
)

func startBackend(t *testing.T, msg string) *backend.Server {
	t.Helper()
	s := backend.New(user, pass, []byte(msg))
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func plainTarget(addr string) *Target {
	return &Target{Addr: addr, User: user, Password: pass, Timeout: 5 * time.Second}
}

func TestLoginCycle(t *testing.T) {
	be := startBackend(t, "x")
	tests := []struct {
		name     string
		password string
		wantErr  bool
	}{
		{"right password", pass, false},
		{"wrong password", "nope", true},
	}
	for _, tt := range tests {
		tg := plainTarget(be.Addr())
		tg.Password = tt.password
		if err := tg.LoginCycle(); (err != nil) != tt.wantErr {
			t.Errorf("%s: LoginCycle() = %v, want error %v", tt.name, err, tt.wantErr)
		}
	}
}

func TestSourcesAreUsedInTurn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srcs := []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")}
	tg := &Target{Addr: ln.Addr().String(), Sources: srcs}
	for range 4 {
		c, err := dialTCP(tg.Addr, tg.source(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		got := sc.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
		want := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr()
		if got != want || (got != srcs[0] && got != srcs[1]) {
			t.Errorf("connection from %v, dialed from %v, want one of %v", got, want, srcs)
		}
		c.Close()
		sc.Close()
	}
}

func TestRelayCountsWholeMessages(t *testing.T) {
	msg := strings.Repeat("0123456789", 10000) // 100 kB: several reads per literal
	be := startBackend(t, msg)
	st, err := Relay(plainTarget(be.Addr()), 2, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if st.Fetches == 0 || st.Bytes != int64(st.Fetches)*int64(len(msg)) {
		t.Fatalf("Relay() = %d bytes in %d fetches, want %d bytes each", st.Bytes, st.Fetches, len(msg))
	}
	if st.MBps() <= 0 {
		t.Fatalf("MBps() = %v, want > 0", st.MBps())
	}
}

func TestOpenIdle(t *testing.T) {
	be := startBackend(t, "x")
	set, err := OpenIdle(plainTarget(be.Addr()), 20, 4)
	if err != nil {
		t.Fatal(err)
	}
	if set.Len() != 20 || be.Sessions() != 20 {
		t.Fatalf("OpenIdle(20) = %d sessions, backend has %d, want 20", set.Len(), be.Sessions())
	}
	set.Close()
	waitFor(t, func() bool { return be.Sessions() == 0 })
}

func TestOpenIdleFailure(t *testing.T) {
	be := startBackend(t, "x")
	tg := plainTarget(be.Addr())
	tg.Password = "nope"
	if _, err := OpenIdle(tg, 5, 2); err == nil {
		t.Fatal("OpenIdle with a wrong password succeeded")
	}
	waitFor(t, func() bool { return be.Sessions() == 0 })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTLSThroughProxy drives the TLS path through a minimal terminating relay.
func TestTLSThroughProxy(t *testing.T) {
	be := startBackend(t, "x")
	addr := tlsRelay(t, be.Addr())
	tg := plainTarget(addr)
	tg.TLS = &tls.Config{InsecureSkipVerify: true}

	st := Loop(2, 100*time.Millisecond, tg.LoginCycle)
	if st.Ops == 0 || st.Errors != 0 || len(st.Latency) != st.Ops {
		t.Fatalf("Loop(LoginCycle) = %d ops, %d errors (%v), %d latencies", st.Ops, st.Errors, st.FirstErr, len(st.Latency))
	}
	if err := tg.Handshake(); err != nil {
		t.Fatalf("Handshake() = %v", err)
	}
	s, err := tg.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v := s.TLSState().Version; v != tls.VersionTLS13 {
		t.Fatalf("TLSState().Version = %x, want TLS 1.3", v)
	}
}

// tlsRelay terminates TLS and copies bytes to backend, the way the proxies do.
func tlsRelay(t *testing.T, backendAddr string) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{testCert(t)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, err := net.Dial("tcp", backendAddr)
				if err != nil {
					return
				}
				defer b.Close()
				go func() { io.Copy(b, c); b.Close() }()
				io.Copy(c, b)
			}()
		}
	}()
	return ln.Addr().String()
}

func testCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestFlood(t *testing.T) {
	refusalWait = 100 * time.Millisecond
	refusing := listen(t, func(c net.Conn) { c.Close() })
	st := Flood(refusing, netip.MustParseAddr("127.0.0.9"), 2, 50*time.Millisecond)
	if st.Refused == 0 || st.Errors != 0 {
		t.Fatalf("Flood(refusing) = %d refused, %d errors (%v), want refusals only", st.Refused, st.Errors, st.FirstErr)
	}
	holding := listen(t, func(c net.Conn) { time.Sleep(time.Second); c.Close() })
	if err := Refused(holding, netip.MustParseAddr("127.0.0.9")); !errors.Is(err, errNotRefused) {
		t.Fatalf("Refused(holding) = %v, want errNotRefused", err)
	}
	greeting := listen(t, func(c net.Conn) { io.WriteString(c, "* OK\r\n"); c.Close() })
	if err := Refused(greeting, netip.MustParseAddr("127.0.0.9")); !errors.Is(err, errNotRefused) {
		t.Fatalf("Refused(greeting) = %v, want errNotRefused", err)
	}
}

// TestFloodLoopPaced holds the shared flood loop to its rate: never more
// attempts than are due (a slow machine may send fewer), errors counted apart.
func TestFloodLoopPaced(t *testing.T) {
	var n atomic.Int64
	const rate, workers, d = 500.0, 2, 200 * time.Millisecond
	st := floodLoop(workers, rate, d, func() error {
		if n.Add(1)%10 == 0 {
			return errors.New("every tenth fails")
		}
		return nil
	})
	// Each worker may start one attempt as the deadline passes.
	limit := int64(rate*st.Elapsed.Seconds()) + workers
	if got := n.Load(); got == 0 || got > limit {
		t.Fatalf("floodLoop at %v/s for %v made %d attempts, want 1..%d", rate, st.Elapsed, got, limit)
	}
	if int64(st.Refused+st.Errors) != n.Load() || st.Errors != int(n.Load()/10) || st.FirstErr == nil {
		t.Fatalf("floodLoop counted %d + %d errors (%v) of %d attempts", st.Refused, st.Errors, st.FirstErr, n.Load())
	}
}

func listen(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().String()
}

func TestPercentile(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	var lat []time.Duration
	for i := 1; i <= 100; i++ {
		lat = append(lat, ms(i))
	}
	tests := []struct {
		lat  []time.Duration
		q    float64
		want time.Duration
	}{
		{lat, 0.50, ms(50)},
		{lat, 0.99, ms(99)},
		{lat, 1, ms(100)},
		{lat, 0, ms(1)},
		{[]time.Duration{ms(7)}, 0.99, ms(7)},
		{nil, 0.5, 0},
	}
	for _, tt := range tests {
		if got := (Stats{Latency: tt.lat}).Percentile(tt.q); got != tt.want {
			t.Errorf("Percentile(%v) over %d samples = %v, want %v", tt.q, len(tt.lat), got, tt.want)
		}
	}
}

// TestStatsAdd: slices of one measurement add up to the whole: rate over
// the summed time, percentiles over every latency.
func TestStatsAdd(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	errA, errB := errors.New("a"), errors.New("b")
	var s Stats
	s.Add(Stats{Ops: 2, Errors: 1, FirstErr: errA, Elapsed: time.Second, Latency: []time.Duration{ms(3), ms(9)}})
	s.Add(Stats{Ops: 4, Errors: 1, FirstErr: errB, Elapsed: time.Second, Latency: []time.Duration{ms(1), ms(2), ms(4), ms(5)}})
	if s.Ops != 6 || s.Errors != 2 || s.FirstErr != errA || s.Elapsed != 2*time.Second {
		t.Fatalf("Add: %d ops, %d errors (%v), %v", s.Ops, s.Errors, s.FirstErr, s.Elapsed)
	}
	if got := s.Rate(); got != 3 {
		t.Errorf("Rate = %v, want 3", got)
	}
	if !slices.IsSorted(s.Latency) || len(s.Latency) != 6 || s.Percentile(1) != ms(9) || s.Percentile(0.5) != ms(3) {
		t.Errorf("latencies after Add: %v", s.Latency)
	}
}

func TestLiteralSize(t *testing.T) {
	tests := []struct {
		line   string
		want   int64
		wantOK bool
	}{
		{"* 1 FETCH (BODY[] {16777216}", 16777216, true},
		{"* 1 FETCH (BODY[] {0}", 0, true},
		{"a OK done", 0, false},
		{"* OK {x}", 0, false},
		{"}", 0, false},
	}
	for _, tt := range tests {
		got, ok := literalSize([]byte(tt.line))
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("literalSize(%q) = %d, %v, want %d, %v", tt.line, got, ok, tt.want, tt.wantOK)
		}
	}
}
