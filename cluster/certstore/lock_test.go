package certstore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imapgw/imapgw/internal/testbed"
)

// TestLockExclusion: workers in goroutines of three storages, each on its
// own Redis connection pool (three nodes), take one lock in turn; never
// two inside at once, and each wait ends when the holder releases.
func TestLockExclusion(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	var nodes []*Storage
	for range 3 {
		nodes = append(nodes, New(client(t, r), "x:", Options{PollInterval: 5 * time.Millisecond, Logger: quiet(t)}))
	}
	const perWorker, workersPerNode = 5, 4
	var inside, maxInside, entries atomic.Int32
	var wg sync.WaitGroup
	for _, st := range nodes {
		for range workersPerNode {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				for range perWorker {
					if err := st.Lock(ctx, "issue_cert_example.com"); err != nil {
						t.Errorf("Lock: %v", err)
						return
					}
					n := inside.Add(1)
					if n > maxInside.Load() {
						maxInside.Store(n)
					}
					entries.Add(1)
					// Hold it across a few Redis round trips, as an
					// obtain does: others must be polling meanwhile.
					for range 3 {
						if !st.Exists(ctx, "anything") {
							_ = st.Store(ctx, "anything", []byte("x"))
						}
					}
					inside.Add(-1)
					if err := st.Unlock(ctx, "issue_cert_example.com"); err != nil {
						t.Errorf("Unlock: %v", err)
					}
				}
			})
		}
	}
	wg.Wait()
	if got, want := entries.Load(), int32(3*workersPerNode*perWorker); got != want {
		t.Errorf("%d critical sections ran, want %d", got, want)
	}
	if maxInside.Load() != 1 {
		t.Errorf("up to %d holders at once, want 1", maxInside.Load())
	}

	// Uncontended Lock+Unlock cost: the latency a certmagic operation adds.
	ctx := context.Background()
	const rounds = 200
	start := time.Now()
	for range rounds {
		if err := nodes[0].Lock(ctx, "solo"); err != nil {
			t.Fatal(err)
		}
		if err := nodes[0].Unlock(ctx, "solo"); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("uncontended Lock+Unlock: %v each (%d rounds)", time.Since(start)/rounds, rounds)
}

// TestLockWaitHonoursContext: a Lock waiting on a held lock returns when
// its context ends.
func TestLockWaitHonoursContext(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	a, b := New(client(t, r), "x:", Options{Logger: quiet(t)}), New(client(t, r), "x:", Options{Logger: quiet(t)})
	if err := a.Lock(context.Background(), "n"); err != nil {
		t.Fatal(err)
	}
	defer a.Unlock(context.Background(), "n")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := b.Lock(ctx, "n")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock on a held lock = %v, want the context's deadline", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Lock returned %v after its context ended, want about 300ms", took)
	}
}

// TestLockOfCrashedHolderExpires: the holder's process dies (its client
// goes away, nothing refreshes); another node gets the lock once the TTL
// has run out, not before, and the dead holder's late Unlock leaves the new
// holder's lock alone.
func TestLockOfCrashedHolderExpires(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	const ttl = 600 * time.Millisecond
	deadClient := client(t, r)
	dead := New(deadClient, "x:", Options{LockTTL: ttl, Logger: quiet(t)})
	alive := New(client(t, r), "x:", Options{LockTTL: ttl, PollInterval: 10 * time.Millisecond, Logger: quiet(t)})
	ctx := context.Background()
	if err := dead.Lock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	crashed := time.Now()
	deadClient.Close()

	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := alive.Lock(wctx, "n"); err != nil {
		t.Fatalf("the lock of a crashed holder did not expire: %v", err)
	}
	waited := time.Since(crashed)
	t.Logf("lock of a crashed holder taken over after %v (TTL %v)", waited, ttl)
	if waited < ttl/2 {
		t.Errorf("taken over after %v: before the TTL of %v could have run out", waited, ttl)
	}
	// The dead holder's Unlock (its client gone) fails and must not have
	// touched the new holder's lock.
	if err := dead.Unlock(ctx, "n"); err == nil {
		t.Errorf("Unlock through a closed client succeeded")
	}
	third := New(client(t, r), "x:", Options{Logger: quiet(t)})
	if ok, err := third.TryLock(ctx, "n"); err != nil || ok {
		t.Errorf("TryLock while the new holder holds it = %v, %v; want false", ok, err)
	}
	if err := alive.Unlock(ctx, "n"); err != nil {
		t.Errorf("Unlock by the new holder: %v", err)
	}
}

// TestUnlockOnlyOwnLock: a holder whose lock expired and was taken by
// another node does not release the other's lock; Unlock of a lock never
// taken is an error.
func TestUnlockOnlyOwnLock(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	rc := client(t, r)
	a, b := New(client(t, r), "x:", Options{Logger: quiet(t)}), New(client(t, r), "x:", Options{Logger: quiet(t)})
	ctx := context.Background()
	if err := a.Unlock(ctx, "never"); err == nil {
		t.Errorf("Unlock of a lock never taken: no error")
	}
	if err := a.Lock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	// Its lock vanishes behind its back (expiry, an operator's DEL).
	if err := rc.Del(ctx, "x:{certmagic}:lock:n").Err(); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryLock(ctx, "n"); err != nil || !ok {
		t.Fatalf("b TryLock of a free lock = %v, %v", ok, err)
	}
	if err := a.Unlock(ctx, "n"); err != nil {
		t.Errorf("a's late Unlock: %v (want nil: its lock is gone, nothing to release)", err)
	}
	if ok, _ := a.TryLock(ctx, "n"); ok {
		t.Fatalf("a's late Unlock released b's lock")
	}
	if err := b.Unlock(ctx, "n"); err != nil {
		t.Errorf("b Unlock: %v", err)
	}
}

// TestRefreshKeepsLongHolder: a holder that is alive keeps its lock for
// many TTLs (a long ACME order); others get it only after Unlock. The TTL
// is long enough that a refresh (every TTL/3) survives a scheduling stall of
// a second on a loaded machine under -race: with 300 ms it once did not.
func TestRefreshKeepsLongHolder(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	const ttl = 2 * time.Second
	holder := New(client(t, r), "x:", Options{LockTTL: ttl, Logger: quiet(t)})
	other := New(client(t, r), "x:", Options{LockTTL: ttl, Logger: quiet(t)})
	ctx := context.Background()
	if err := holder.Lock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	held := time.Now()
	tries := 0
	for time.Since(held) < 3*ttl {
		tries++
		if ok, err := other.TryLock(ctx, "n"); err != nil || ok {
			t.Fatalf("after %v (TTL %v) another took the refreshed lock: %v, %v", time.Since(held), ttl, ok, err)
		}
		time.Sleep(ttl / 10)
	}
	// RenewLockLease stretches it (certmagic asks before long retries).
	if err := holder.RenewLockLease(ctx, "n", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	rc := client(t, r)
	if pttl, err := rc.PTTL(ctx, "x:{certmagic}:lock:n").Result(); err != nil || pttl < 5*time.Second {
		t.Errorf("lock TTL after RenewLockLease(10s) = %v, %v", pttl, err)
	}
	if err := holder.Unlock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	if ok, err := other.TryLock(ctx, "n"); err != nil || !ok {
		t.Fatalf("TryLock after Unlock = %v, %v", ok, err)
	}
	other.Unlock(ctx, "n")
	t.Logf("held %v with TTL %v; %d takeover attempts refused", 3*ttl, ttl, tries)
}
