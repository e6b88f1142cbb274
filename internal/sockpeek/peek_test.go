package sockpeek_test

import (
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/imapgw/imapgw/internal/sockpeek"
)

// ready asks Ready about c's socket.
func ready(t *testing.T, c net.Conn) bool {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var r bool
	if err := rc.Read(func(fd uintptr) bool { r = sockpeek.Ready(fd); return true }); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestReady: a quiet socket is not ready; data makes it ready and stays
// there for the read (nothing is taken); the peer's close makes it ready.
func TestReady(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if !sockpeek.Supported {
		if !ready(t, c) {
			t.Error("Ready without MSG_PEEK must say ready")
		}
		return
	}
	if ready(t, c) {
		t.Error("a quiet socket is ready")
	}
	peer.Write([]byte("x"))
	waitReady(t, c)
	b := make([]byte, 2)
	if n, err := c.Read(b); n != 1 || b[0] != 'x' || err != nil {
		t.Fatalf("read after Ready = %d %q %v, want the byte Ready saw", n, b[:n], err)
	}
	if ready(t, c) {
		t.Error("ready again with nothing left")
	}
	peer.Close()
	waitReady(t, c)
}

func waitReady(t *testing.T, c net.Conn) {
	t.Helper()
	for range 200 {
		if ready(t, c) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("not ready within 1s")
}
