package pinstore

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/imapgw/imapgw/internal/testbed"
)

func newClient(t testing.TB, r *testbed.Redis) redis.UniversalClient {
	t.Helper()
	rc := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{r.Addr}, ContextTimeoutEnabled: true})
	t.Cleanup(func() { rc.Close() })
	return rc
}

// TestStoreSemantics: pick-if-absent, counts summed over nodes, the pin
// holding for the affinity after the last session, a crashed node's counts
// running out with its lease, Move, and a TTL on every key.
func TestStoreSemantics(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	ctx := context.Background()
	rc := newClient(t, r)
	n1 := New(newClient(t, r), "gw:", "n1", Options{})
	n2 := New(newClient(t, r), "gw:", "n2", Options{})
	const aff = 2 * time.Second

	// Pick-if-absent: the first asker's choice is the reservation.
	pin, err := n1.Pick(ctx, "alice", "imap1", time.Minute)
	if err != nil || pin.Server != "imap1" || !pin.Fresh {
		t.Fatalf("first Pick = %+v, %v; want a fresh imap1", pin, err)
	}
	pin, err = n2.Pick(ctx, "alice", "imap2", time.Minute)
	if err != nil || pin.Server != "imap1" || pin.Fresh {
		t.Fatalf("second node's Pick = %+v, %v; want the reserved imap1", pin, err)
	}

	// Counts add up across nodes; the latest session's server is the pin.
	if err := n1.Report(ctx, "alice", 1, "imap1", aff); err != nil {
		t.Fatal(err)
	}
	if err := n2.Report(ctx, "alice", 2, "imap1", aff); err != nil {
		t.Fatal(err)
	}
	if pin, _ = n1.Pick(ctx, "alice", "", 0); pin.Server != "imap1" || pin.Sessions != 3 {
		t.Errorf("after 1+2 sessions: %+v", pin)
	}
	_ = n1.Report(ctx, "alice", 0, "", aff)
	_ = n2.Report(ctx, "alice", 0, "", aff)
	pin, _ = n2.Pick(ctx, "alice", "imap2", time.Minute)
	if pin.Server != "imap1" || pin.Sessions != 0 || pin.Fresh || time.Until(pin.Until) > aff+time.Second {
		t.Errorf("after the last session ended: %+v; want imap1 pinned for the affinity", pin)
	}
	if pttl := rc.PTTL(ctx, "gw:pin:alice").Val(); pttl <= 0 || pttl > aff {
		t.Errorf("key TTL with no session open = %v, want (0, %v]", pttl, aff)
	}
	testbed.WaitFor(t, 5*time.Second, "the affinity to end", func() bool {
		p, err := n2.Pick(ctx, "alice", "imap2", time.Minute)
		return err == nil && p.Fresh && p.Server == "imap2"
	})

	// A node that crashes with sessions open stops renewing: its count
	// runs out after the lease, then the pin holds for the affinity.
	const lease = 500 * time.Millisecond
	dead := New(newClient(t, r), "gw:", "dead", Options{Lease: lease})
	if err := dead.Report(ctx, "bob", 2, "imap2", 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	crashed := time.Now()
	if pin, _ = n1.Pick(ctx, "bob", "imap1", time.Minute); pin.Server != "imap2" || pin.Sessions != 2 {
		t.Errorf("with the node alive: %+v", pin)
	}
	testbed.WaitFor(t, 5*time.Second, "the dead node's sessions to run out", func() bool {
		p, _ := n1.Pick(ctx, "bob", "", 0)
		return p.Sessions == 0
	})
	if took := time.Since(crashed); took < lease/2 {
		t.Errorf("counts ran out after %v, before the lease of %v", took, lease)
	}
	if pin, _ = n1.Pick(ctx, "bob", "", 0); pin.Server != "imap2" {
		t.Errorf("right after the lease ran out the pin is %+v; want imap2 for the affinity", pin)
	}
	testbed.WaitFor(t, 5*time.Second, "bob's key to expire on its own", func() bool {
		return rc.Exists(ctx, "gw:pin:bob").Val() == 0
	})

	// Move overrides, and is marked.
	if err := n1.Move(ctx, "alice", "imap9", aff); err != nil {
		t.Fatal(err)
	}
	if pin, _ = n2.Pick(ctx, "alice", "imap2", time.Minute); pin.Server != "imap9" || !pin.Moved {
		t.Errorf("after Move: %+v", pin)
	}
	for _, k := range rc.Keys(ctx, "*").Val() {
		if ttl := rc.PTTL(ctx, k).Val(); ttl <= 0 {
			t.Errorf("key %s has no TTL (%v)", k, ttl)
		}
	}
}
