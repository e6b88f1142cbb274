package certstore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// heldLock is a lock this instance holds: its token and the refresher
// keeping it alive.
type heldLock struct {
	key   string
	token string
	lease atomic.Int64 // current lease in ns: the lock's TTL at each refresh
	stop  chan struct{}
	done  chan struct{}
}

// extendScript sets the lock's TTL when the holder still owns it.
var extendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// releaseScript deletes the lock only when the token is the holder's: a
// lock that expired and was taken by another stays theirs.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

func (s *Storage) lockKey(name string) string { return s.base + "lock:" + name }

// newToken is a lock holder's identity: 128 random bits (base32).
func newToken() string {
	return rand.Text()
}

// Lock blocks until it holds the lock called name, ctx is done, or Redis
// fails (certmagic then retries the whole operation later). Whoever
// obtains the lock must re-check storage: another node may have done the
// work meanwhile.
func (s *Storage) Lock(ctx context.Context, name string) error {
	for {
		ok, err := s.TryLock(ctx, name)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		// Jitter, so the waiters of one released lock do not retry in step.
		wait := s.poll/2 + mrand.N(s.poll)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("certstore: waiting for lock %s: %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

// TryLock takes the lock called name if it is free, without waiting.
func (s *Storage) TryLock(ctx context.Context, name string) (bool, error) {
	h := &heldLock{key: s.lockKey(name), token: newToken(), stop: make(chan struct{}), done: make(chan struct{})}
	h.lease.Store(int64(s.ttl))
	ok, err := s.rc.SetArgs(ctx, h.key, h.token, redis.SetArgs{Mode: "NX", TTL: s.ttl}).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("certstore: taking lock %s: %w", name, err)
	case ok != "OK":
		return false, nil
	}
	s.mu.Lock()
	s.held[name] = h
	s.mu.Unlock()
	go s.refresh(name, h)
	return true, nil
}

// refresh renews h's TTL every third of it until Unlock stops it, so a
// holder that is alive keeps its lock however long the ACME order takes.
// Failed refreshes are retried at the next tick: the lock lives a full TTL
// after the last good one.
func (s *Storage) refresh(name string, h *heldLock) {
	defer close(h.done)
	for {
		t := time.NewTimer(time.Duration(h.lease.Load()) / 3)
		select {
		case <-h.stop:
			t.Stop()
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(h.lease.Load())/3)
		n, err := extendScript.Run(ctx, s.rc, []string{h.key}, h.token, h.lease.Load()/int64(time.Millisecond)).Int()
		cancel()
		switch {
		case err != nil:
			s.log.Warn("certificate storage: refreshing a lock failed; retrying", "lock", name, "error", err)
		case n == 0:
			s.log.Error("certificate storage: a held lock expired and may be held by another node", "lock", name)
			return
		}
	}
}

// Unlock releases the lock called name that this instance holds. A lock
// that expired meanwhile (and perhaps went to another node) is left alone.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	h := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if h == nil {
		return fmt.Errorf("certstore: unlock %s: not held by this instance", name)
	}
	close(h.stop)
	<-h.done
	n, err := releaseScript.Run(ctx, s.rc, []string{h.key}, h.token).Int()
	if err != nil {
		return fmt.Errorf("certstore: releasing lock %s: %w", name, err)
	}
	if n == 0 {
		s.log.Warn("certificate storage: a lock had expired before its release", "lock", name)
	}
	return nil
}

// RenewLockLease makes the held lock called name live lease from now and
// from each refresh on (certmagic asks this before long retries).
func (s *Storage) RenewLockLease(ctx context.Context, name string, lease time.Duration) error {
	s.mu.Lock()
	h := s.held[name]
	s.mu.Unlock()
	if h == nil {
		return fmt.Errorf("certstore: renewing lock %s: not held by this instance", name)
	}
	lease = max(lease, s.ttl)
	h.lease.Store(int64(lease))
	n, err := extendScript.Run(ctx, s.rc, []string{h.key}, h.token, lease.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("certstore: renewing lock %s: %w", name, err)
	}
	if n == 0 {
		return fmt.Errorf("certstore: renewing lock %s: it expired and may be held by another node", name)
	}
	return nil
}
