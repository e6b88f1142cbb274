package testbed

import (
	"strings"
	"testing"
)

// TestRedisLifecycle starts a password-protected server with the AOF on, pauses
// and resumes it, kills it and starts it again on the same address.
func TestRedisLifecycle(t *testing.T) {
	r := StartRedis(t, RedisOptions{Password: "s3cret", AppendOnly: true})
	if err := r.ping(); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if !strings.HasPrefix(r.URL(), "redis://:s3cret@127.0.0.1:") {
		t.Fatalf("URL = %q", r.URL())
	}
	r.Pause()
	if err := r.ping(); err == nil {
		t.Fatalf("a paused server answered PING")
	}
	r.Resume()
	if err := r.ping(); err != nil {
		t.Fatalf("ping after resume: %v", err)
	}
	r.Kill()
	if err := r.ping(); err == nil {
		t.Fatalf("a killed server answered PING")
	}
	r.Start()
	if err := r.ping(); err != nil {
		t.Fatalf("ping after restart: %v", err)
	}
	noPass := &Redis{Addr: r.Addr}
	if err := noPass.ping(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("ping without the password: %v, want NOAUTH", err)
	}
}
