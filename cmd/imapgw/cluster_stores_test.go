package main

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/imapgw/imapgw/internal/testbed"
)

// TestClusterStores: the wiring gives two nodes one certificate storage
// and one user pinning on the same Redis, under the fleet's prefix.
func TestClusterStores(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{Password: "s3cret"})
	opts, err := redis.ParseURL(r.URL())
	if err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(opts)
	t.Cleanup(func() { rc.Close() })
	ctx := context.Background()
	certsA, pinsA := clusterStores(rc, "fleet:", "a", slog.Default())
	certsB, pinsB := clusterStores(rc, "fleet:", "b", slog.Default())

	if err := certsA.Store(ctx, "certificates/x/x.crt", []byte("pem")); err != nil {
		t.Fatal(err)
	}
	if v, err := certsB.Load(ctx, "certificates/x/x.crt"); err != nil || string(v) != "pem" {
		t.Errorf("node b loads %q, %v; want node a's value", v, err)
	}
	if pin, err := pinsA.Pick(ctx, "alice", "imap1", time.Minute); err != nil || !pin.Fresh {
		t.Fatalf("node a Pick = %+v, %v", pin, err)
	}
	if pin, err := pinsB.Pick(ctx, "alice", "imap2", time.Minute); err != nil || pin.Server != "imap1" {
		t.Errorf("node b Pick = %+v, %v; want node a's imap1", pin, err)
	}
	keys, err := rc.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if len(k) < len("fleet:") || k[:len("fleet:")] != "fleet:" {
			t.Errorf("key %q outside the prefix", k)
		}
	}
}
