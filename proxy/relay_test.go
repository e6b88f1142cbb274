package proxy_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/proxy"
)

// scriptedBackend is an IMAP server that logs anyone in and then hands the
// connection to the test, which writes and reads raw bytes on it: the relay is
// tested on exact byte streams, not on what an IMAP server happens to send.
type scriptedBackend struct {
	ln    net.Listener
	conns chan *bufio.ReadWriter
	raw   chan net.Conn
}

func startScripted(t *testing.T) *scriptedBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &scriptedBackend{ln: ln, conns: make(chan *bufio.ReadWriter, 4), raw: make(chan net.Conn, 4)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go b.serve(c)
		}
	}()
	return b
}

func (b *scriptedBackend) serve(c net.Conn) {
	rw := bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))
	rw.WriteString("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN ID] scripted\r\n")
	rw.Flush()
	for {
		line, err := rw.ReadString('\n')
		if err != nil {
			c.Close()
			return
		}
		tag, rest, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		verb, _, _ := strings.Cut(rest, " ")
		switch strings.ToUpper(verb) {
		case "ID":
			rw.WriteString("* ID NIL\r\n" + tag + " OK ID completed\r\n")
		case "CAPABILITY":
			rw.WriteString("* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN ID\r\n" + tag + " OK done\r\n")
		case "AUTHENTICATE", "LOGIN":
			rw.WriteString(tag + " OK [CAPABILITY IMAP4rev1] Logged in\r\n")
			rw.Flush()
			b.conns <- rw
			b.raw <- c
			return
		default:
			rw.WriteString(tag + " OK done\r\n")
		}
		rw.Flush()
	}
}

// relayed logs a TLS client in through the gateway and returns both ends of
// the relayed session: the client's *tls.Conn (under it, a recorder of the raw
// bytes) and the backend's socket.
func relayed(t *testing.T, g *gateway, b *scriptedBackend) (*tls.Conn, *recorder, net.Conn) {
	t.Helper()
	raw, err := net.Dial("tcp", g.implicit)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{Conn: raw}
	tc := tls.Client(rec, g.clientTLS())
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(tc)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "* OK") {
		t.Fatalf("greeting %q, %v", line, err)
	}
	io.WriteString(tc, "a LOGIN alice alice-secret\r\n")
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "a OK") {
		t.Fatalf("login %q, %v", line, err)
	}
	if br.Buffered() != 0 {
		t.Fatalf("%d bytes after the login reply", br.Buffered())
	}
	var be net.Conn
	select {
	case <-b.conns:
		be = <-b.raw
	case <-time.After(10 * time.Second):
		t.Fatal("the backend saw no login")
	}
	t.Cleanup(func() { be.Close() })
	tc.SetDeadline(time.Time{})
	return tc, rec, be
}

// recorder keeps the last bytes read from the socket, to look at the last TLS record.
type recorder struct {
	net.Conn
	mu   sync.Mutex
	tail []byte
}

func (r *recorder) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	r.mu.Lock()
	r.tail = append(r.tail, b[:n]...)
	if len(r.tail) > 1<<20 {
		r.tail = append([]byte(nil), r.tail[len(r.tail)-64<<10:]...)
	}
	r.mu.Unlock()
	return n, err
}

// pump writes size random bytes to w in writes of up to chunk bytes and
// returns their hash.
func pump(w io.Writer, size, chunk int) ([32]byte, error) {
	h := sha256.New()
	buf := make([]byte, chunk)
	for size > 0 {
		b := buf[:min(chunk, size)]
		rand.Read(b)
		h.Write(b)
		if _, err := w.Write(b); err != nil {
			return [32]byte{}, err
		}
		size -= len(b)
	}
	return [32]byte(h.Sum(nil)), nil
}

func drain(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return [32]byte(h.Sum(nil)), n, err
}

// TestRelayByteExact: bytes from the backend (in writes of many sizes, so
// the gateway's reads are full, short, bulk and small) and from the client at
// the same time arrive intact. The backend's half-close reaches the client as
// close_notify after the last byte while the client still sends; the client's
// half-close then reaches the backend as EOF after the client's last byte.
func TestRelayByteExact(t *testing.T) {
	b := startScripted(t)
	g := startGateway(t, b.ln.Addr().String(), nil)
	tc, rec, be := relayed(t, g, b)
	const up = 6 << 20

	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	fromBackend := make(chan result, 1)
	downDone := make(chan struct{})
	go func() { s, n, err := drain(tc); fromBackend <- result{s, n, err}; close(downDone) }()
	fromClient := make(chan result, 1)
	go func() { s, n, err := drain(be); fromClient <- result{s, n, err} }()

	sentUp := make(chan result, 1)
	go func() {
		h := sha256.New()
		w := io.MultiWriter(tc, h)
		_, err := pump(w, up-1<<20, 16<<10+7)
		<-downDone // the rest after the other direction's half-close
		if err == nil {
			_, err = pump(w, 1<<20, 1000)
		}
		if err == nil {
			err = tc.CloseWrite() // close_notify; the gateway passes the half-close on
		}
		sentUp <- result{sum: [32]byte(h.Sum(nil)), err: err}
	}()
	h := sha256.New()
	var down int64
	for _, chunk := range []int{1, 100, 4096, 32 << 10, 32<<10 + 1, 300 << 10, 1 << 20} {
		for range min(2000, (4<<20)/chunk) {
			buf := make([]byte, chunk)
			rand.Read(buf)
			h.Write(buf)
			if _, err := be.Write(buf); err != nil {
				t.Fatal(err)
			}
			down += int64(chunk)
		}
	}
	sentDown := [32]byte(h.Sum(nil))
	be.(*net.TCPConn).CloseWrite()

	select {
	case got := <-fromBackend:
		if got.err != nil || got.sum != sentDown || got.n != down {
			t.Fatalf("client got %d of %d bytes, err %v; hash matches: %v", got.n, down, got.err, got.sum == sentDown)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("client: no EOF after the backend's half-close")
	}
	// The last record on the wire is an alert (two bytes sealed: 19 bytes of
	// payload): the gateway sent close_notify, not just a FIN.
	rec.mu.Lock()
	tail := rec.tail
	rec.mu.Unlock()
	if len(tail) < 24 || !bytes.Equal(tail[len(tail)-24:len(tail)-19], []byte{0x17, 0x03, 0x03, 0x00, 0x13}) {
		t.Errorf("the stream does not end with a sealed alert record: % x", tail[max(0, len(tail)-24):])
	}
	sent := <-sentUp
	if sent.err != nil {
		t.Fatal(sent.err)
	}
	select {
	case got := <-fromClient:
		if got.err != nil || got.sum != sent.sum || got.n != up {
			t.Fatalf("backend got %d of %d bytes, err %v; hash matches: %v", got.n, up, got.err, got.sum == sent.sum)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("backend: no EOF after the client's half-close")
	}
	waitNoSessions(t, g)
}

// TestRelayIdleTimeout: a relayed session is closed idle_timeout after its
// last byte, not before, even after bulk traffic (whose deadlines move once per
// refresh interval, never so as to fire early). Each direction has its own
// timer, so both end their traffic at the same moment here.
func TestRelayIdleTimeout(t *testing.T) {
	const idle = 1500 * time.Millisecond
	b := startScripted(t)
	g := startGateway(t, b.ln.Addr().String(), func(c *conf.Config) { c.Limits.IdleTimeout = conf.D(idle) })
	tc, _, be := relayed(t, g, b)
	got := make(chan error, 1)
	go func() {
		_, n, err := drain(tc)
		if n != 8<<20 {
			err = fmt.Errorf("%d bytes, %v", n, err)
		}
		got <- err
	}()
	// Bulk traffic for longer than a refresh interval; the client sends a
	// line each round, so neither direction's timer runs out meanwhile.
	be.SetReadDeadline(time.Now().Add(30 * time.Second))
	for i := range 4 {
		size := 8 << 20 / 4
		if i == 3 {
			size = 8<<20 - 3*size
		}
		if _, err := pump(be, size, 256<<10); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tc, "z NOOP\r\n")
		if _, err := io.ReadFull(be, make([]byte, 8)); err != nil {
			t.Fatal(err)
		}
		if i < 3 {
			time.Sleep(idle / 4)
		}
	}
	quiet := time.Now()
	_, err := be.Read(make([]byte, 1))
	d := time.Since(quiet)
	if err == nil || os.IsTimeout(err) {
		t.Fatalf("backend read: %v after %v", err, d)
	}
	if d < idle-50*time.Millisecond || d > idle+2*time.Second {
		t.Errorf("closed %v after the last byte, want idle_timeout %v (up to its refresh interval and a second later)", d, idle)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("client: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the client was not closed")
	}
	waitNoSessions(t, g)
}

// TestRelayStalledClient: a client that stops reading while the backend sends
// fills the socket buffers; the gateway's gathered write then blocks, and the
// session ends after idle_timeout instead of holding both sockets.
func TestRelayStalledClient(t *testing.T) {
	const idle = 1500 * time.Millisecond
	b := startScripted(t)
	g := startGateway(t, b.ln.Addr().String(), func(c *conf.Config) { c.Limits.IdleTimeout = conf.D(idle) })
	_, _, be := relayed(t, g, b) // the client never reads
	start := time.Now()
	be.SetWriteDeadline(time.Now().Add(20 * time.Second))
	_, err := pump(be, 1<<30, 256<<10)
	if err == nil {
		t.Fatal("1 GB went to a client that does not read")
	}
	t.Logf("backend write failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if d := time.Since(start); d > idle+3*time.Second {
		t.Errorf("backend write failed after %v, want about idle_timeout %v", d, idle)
	}
	waitNoSessions(t, g)
}

// TestRelayPingPong: many small exchanges each way, every one waited for, so
// each direction parks and wakes thousands of times; a wakeup lost between a
// read that found nothing and the wait for readiness would stall an exchange.
func TestRelayPingPong(t *testing.T) {
	b := startScripted(t)
	g := startGateway(t, b.ln.Addr().String(), nil)
	tc, _, be := relayed(t, g, b)
	cr, br := bufio.NewReader(tc), bufio.NewReader(be)
	start := time.Now()
	for i := 0; i < 3000 && time.Since(start) < 8*time.Second; i++ {
		deadline := time.Now().Add(5 * time.Second)
		tc.SetDeadline(deadline)
		be.SetDeadline(deadline)
		line := fmt.Sprintf("p%d NOOP\r\n", i)
		if _, err := io.WriteString(tc, line); err != nil {
			t.Fatal(err)
		}
		if got, err := br.ReadString('\n'); err != nil || got != line {
			t.Fatalf("exchange %d: backend got %q, %v", i, got, err)
		}
		reply := fmt.Sprintf("p%d OK done\r\n", i)
		if _, err := io.WriteString(be, reply); err != nil {
			t.Fatal(err)
		}
		if got, err := cr.ReadString('\n'); err != nil || got != reply {
			t.Fatalf("exchange %d: client got %q, %v", i, got, err)
		}
	}
}

// TestRelayJumboChunks: a FETCH-sized download grows the gateway's reads to
// jumbo chunks (1 MB read, its records written in one go) and arrives intact;
// a relay waiting for data holds none; a client that stops reading holds one
// in a blocked write, and closing it gives the chunk back, as every session's
// end does.
func TestRelayJumboChunks(t *testing.T) {
	b := startScripted(t)
	g := startGateway(t, b.ln.Addr().String(), nil)
	tc, _, be := relayed(t, g, b)
	before := proxy.JumboChunks()
	const size = 32 << 20
	type result struct {
		sum [32]byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		br := bufio.NewReaderSize(tc, 64<<10) // as the bench's client reads
		sum, n, err := drain(io.LimitReader(br, size))
		if err == nil && n != size {
			err = fmt.Errorf("%d of %d bytes", n, size)
		}
		got <- result{sum, err}
	}()
	sent, err := pump(be, size, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if r.err != nil || r.sum != sent {
			t.Fatalf("client: %v; hash matches: %v", r.err, r.sum == sent)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the client did not get the download")
	}
	if n := proxy.JumboChunks() - before; n == 0 {
		t.Error("32 MB went through in 1 MB writes without one jumbo chunk")
	} else {
		t.Logf("%d jumbo chunks for 32 MB", n)
	}
	// All delivered: the direction waits for its backend, holding no chunk
	// (well before it would park, which also gives one back).
	deadline := time.Now().Add(800 * time.Millisecond)
	for proxy.JumbosInFlight() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := proxy.JumbosInFlight(); n != 0 {
		t.Errorf("%d jumbo chunks taken while the relay waits for data", n)
	}

	// Now the client reads nothing: the backend fills the sockets until the
	// gateway's write of a jumbo chunk blocks.
	be.SetWriteDeadline(time.Now().Add(3 * time.Second))
	pump(be, 1<<30, 1<<20)
	if n := proxy.JumbosInFlight(); n == 0 {
		t.Error("no jumbo chunk in flight while the gateway's write to the client is blocked")
	}
	tc.Close()
	waitNoSessions(t, g)
	if n := proxy.JumbosInFlight(); n != 0 {
		t.Errorf("%d jumbo chunks still taken after the session ended", n)
	}
}
