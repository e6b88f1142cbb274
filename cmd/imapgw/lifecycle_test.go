package main

import (
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadyzWhileDraining: after SIGTERM, `imapgw run` answers 503 on /readyz
// from the start of the drain, before its listener closes, while a relayed
// session goes on; /healthz says alive until the process exits, which it does
// (status 0) as soon as the last session ends, well before drain_timeout.
func TestReadyzWhileDraining(t *testing.T) {
	be := startDemoBackend(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "imapgw.toml")
	procConfig{backend: be.Addr, state: filepath.Join(dir, "state"), drain: "60s"}.write(t, path)
	p := startProcess(t, path)

	s, err := openSession(p.imaps, nil)
	if err != nil {
		t.Fatalf("login before SIGTERM: %v", err)
	}
	defer s.conn.Close()
	p.signal(t, syscall.SIGTERM)

	// Probe the IMAP port, then /readyz, until the port is closed and /readyz
	// says 503. A refused port followed by a 200 would be a closed listener on
	// a node still announced ready.
	p.eventually(t, "the IMAP port closed and /readyz 503 after SIGTERM", func() bool {
		c, err := net.DialTimeout("tcp", p.imaps, time.Second)
		closed := err != nil
		if err == nil {
			c.Close()
		}
		code, _, err := p.get("/readyz")
		if err != nil {
			t.Fatalf("GET /readyz while draining: %v", err)
		}
		if closed && code != 503 {
			t.Fatalf("the IMAP port refuses connections but /readyz = %d, want 503 from the start of the drain", code)
		}
		return closed && code == 503
	})
	if code, body, err := p.get("/readyz"); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("GET /readyz while draining = %d %q %v, want 503 saying draining", code, body, err)
	}

	// The session drains: it is still relayed, and the process still alive.
	if err := s.cmd("NOOP"); err != nil {
		t.Errorf("NOOP of the session opened before SIGTERM, while draining: %v", err)
	}
	if code, _, err := p.get("/healthz"); code != 200 {
		t.Errorf("GET /healthz while draining = %d %v, want 200 (alive)", code, err)
	}
	if code, _, err := p.get("/readyz"); code != 503 {
		t.Errorf("GET /readyz later in the drain = %d %v, want 503", code, err)
	}
	if p.exited() {
		t.Fatalf("imapgw run exited with a session still open (drain_timeout 60s): %v", p.err)
	}

	if err := s.logout(); err != nil {
		t.Errorf("LOGOUT while draining: %v", err)
	}
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Errorf("imapgw run after SIGTERM exited %d, want 0", code)
	}
	if !strings.Contains(p.logs.String(), "msg=stopped") {
		t.Errorf("no \"stopped\" line at exit")
	}
	if _, _, err := p.get("/healthz"); err == nil {
		t.Errorf("GET /healthz after exit answered; want the endpoint gone")
	}
}
