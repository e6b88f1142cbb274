package proxy

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// socketPair is a connected loopback TCP pair with small buffers, so that a
// peer that does not read stops a writer quickly.
func socketPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	a.(*net.TCPConn).SetWriteBuffer(64 << 10)
	b.(*net.TCPConn).SetReadBuffer(64 << 10)
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestCoalesceOrder: gathered writes arrive as one stream in order; a write
// from another goroutine while a flush is held up by a peer that does not
// read returns at once and arrives after the flushed bytes, never inside them.
func TestCoalesceOrder(t *testing.T) {
	a, b := socketPair(t)
	c := &coalesceConn{Conn: a}
	first, second, late := randomBytes(3<<20), randomBytes(100), randomBytes(777)
	c.gather(len(first) + len(second))
	c.Write(first)
	c.Write(second)
	flushed := make(chan error, 1)
	go func() { flushed <- c.flush() }() // blocks: b reads nothing yet
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		busy := c.busy
		c.mu.Unlock()
		if busy || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	if n, err := c.Write(late); n != len(late) || err != nil {
		t.Fatalf("Write during a flush = %d, %v", n, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Write during a flush waited %v", d)
	}
	want := append(append(append([]byte(nil), first...), second...), late...)
	got := make([]byte, len(want))
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(b, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes out of order or changed")
	}
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	// Not gathering and nothing in flight: straight to the socket.
	if _, err := c.Write([]byte("direct")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "direct" {
		t.Fatalf("direct write: %q, %v", buf, err)
	}
}

// TestCoalescePartialWrite: a flush to a peer that stops reading ends at the
// write deadline with part of the data sent; the error stays, so nothing is
// written after a torn record, and what arrived is an exact prefix.
func TestCoalescePartialWrite(t *testing.T) {
	a, b := socketPair(t)
	c := &coalesceConn{Conn: a}
	data := randomBytes(16 << 20)
	c.gather(len(data))
	c.Write(data)
	a.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	err := c.flush()
	if !os.IsTimeout(err) {
		t.Fatalf("flush to a peer that does not read = %v, want a timeout", err)
	}
	a.SetWriteDeadline(time.Time{})
	if _, err2 := c.Write([]byte("more")); err2 != err {
		t.Fatalf("Write after a failed flush = %v, want the same error %v", err2, err)
	}
	c.gather(10)
	c.Write([]byte("gathered"))
	if err2 := c.flush(); err2 != err {
		t.Fatalf("flush after a failed flush = %v, want %v", err2, err)
	}
	a.Close()
	got, _ := io.ReadAll(b)
	if len(got) == 0 || len(got) >= len(data) || !bytes.Equal(got, data[:len(got)]) {
		t.Fatalf("peer got %d bytes, want a proper prefix of the %d sent", len(got), len(data))
	}
}
