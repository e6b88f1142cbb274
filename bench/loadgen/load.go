package loadgen

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// refusalWait is how long a refused connection may stay open: a refusal is a
// close at accept, so anything near a second is an open connection.
var refusalWait = time.Second

// LoginCycle is one whole client visit: connect, full TLS handshake, greeting,
// LOGIN, LOGOUT, close.
func (t *Target) LoginCycle() error {
	s, err := t.Open()
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.Login(t.user(), t.Password); err != nil {
		return err
	}
	return s.Logout()
}

// Handshake connects and completes the TLS handshake only, then closes: the
// cost of a full handshake, to compare a refusal with.
func (t *Target) Handshake() error {
	s, err := t.connect()
	if err != nil {
		return err
	}
	return s.Close()
}

// Stats is the outcome of a timed loop of operations.
type Stats struct {
	Ops      int
	Errors   int
	FirstErr error
	Elapsed  time.Duration
	Latency  []time.Duration // of the successful operations, sorted
}

// Rate is successful operations per second.
func (s Stats) Rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Ops) / s.Elapsed.Seconds()
}

// Percentile returns the latency below which a fraction q of the operations
// completed (nearest rank); 0 without samples.
func (s Stats) Percentile(q float64) time.Duration {
	if len(s.Latency) == 0 {
		return 0
	}
	i := int(q*float64(len(s.Latency))+0.5) - 1
	return s.Latency[min(max(i, 0), len(s.Latency)-1)]
}

// Loop runs op from concurrency goroutines until d has passed, timing each call.
// A failing op is counted, and its goroutine pauses briefly so that a dead peer
// does not turn the loop into a busy spin.
func Loop(concurrency int, d time.Duration, op func() error) Stats {
	var (
		mu  sync.Mutex
		all Stats
		wg  sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var own Stats
			own.Latency = make([]time.Duration, 0, 4096)
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if err := op(); err != nil {
					own.Errors++
					own.FirstErr = keepFirst(own.FirstErr, err)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				own.Ops++
				own.Latency = append(own.Latency, time.Since(t0))
			}
			mu.Lock()
			all.merge(own)
			mu.Unlock()
		}()
	}
	wg.Wait()
	all.Elapsed = time.Since(start)
	slices.Sort(all.Latency)
	return all
}

// Add folds the stats of a later loop over the same target into s: operations,
// errors, time and latencies add up, and the latencies stay sorted.
func (s *Stats) Add(o Stats) {
	s.merge(o)
	s.Elapsed += o.Elapsed
	slices.Sort(s.Latency)
}

func (s *Stats) merge(o Stats) {
	s.Ops += o.Ops
	s.Errors += o.Errors
	s.FirstErr = keepFirst(s.FirstErr, o.FirstErr)
	s.Latency = append(s.Latency, o.Latency...)
}

// keepFirst keeps the first non-nil error.
func keepFirst(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// RelayStats is the outcome of Relay.
type RelayStats struct {
	Bytes   int64 // message bytes received
	Fetches int
	Elapsed time.Duration
}

// MBps is throughput in 10^6 bytes per second.
func (r RelayStats) MBps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Bytes) / 1e6 / r.Elapsed.Seconds()
}

// Relay logs in sessions sessions, then has each FETCH the message again and
// again until d has passed. Elapsed runs until the last FETCH completed, so a
// FETCH running past d counts whole, with its time.
func Relay(t *Target, sessions int, d time.Duration) (RelayStats, error) {
	ss, err := openLoggedIn(t, sessions)
	if err != nil {
		return RelayStats{}, err
	}
	defer closeAll(ss)
	var (
		bytes, fetches atomic.Int64
		errOnce        sync.Once
		firstErr       error
		wg             sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for _, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				n, err := s.Fetch()
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				bytes.Add(n)
				fetches.Add(1)
			}
		}()
	}
	wg.Wait()
	st := RelayStats{Bytes: bytes.Load(), Fetches: int(fetches.Load()), Elapsed: time.Since(start)}
	return st, firstErr
}

func openLoggedIn(t *Target, n int) ([]*Session, error) {
	var ss []*Session
	for range n {
		s, err := t.Open()
		if err == nil {
			err = s.Login(t.User, t.Password)
			s.bulk()
			ss = append(ss, s)
		}
		if err != nil {
			closeAll(ss)
			return nil, err
		}
	}
	return ss, nil
}

func closeAll(ss []*Session) {
	for _, s := range ss {
		s.Close()
	}
}

// IdleSet is a set of logged-in sessions parked in IDLE.
type IdleSet struct {
	sessions []*Session
}

// OpenIdle opens n sessions from concurrency goroutines, logs each in and puts
// it in IDLE. On the first failure it closes what it opened and says how far it got.
func OpenIdle(t *Target, n, concurrency int) (*IdleSet, error) {
	var (
		mu       sync.Mutex
		set      IdleSet
		left     atomic.Int64
		firstErr error
		wg       sync.WaitGroup
	)
	left.Store(int64(n))
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				s, err := openIdle(t)
				mu.Lock()
				if err != nil {
					firstErr = keepFirst(firstErr, err)
					left.Store(0)
				} else {
					set.sessions = append(set.sessions, s)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		got := set.Len()
		set.Close()
		return nil, fmt.Errorf("after %d of %d idle sessions: %w", got, n, firstErr)
	}
	return &set, nil
}

func openIdle(t *Target) (*Session, error) {
	s, err := t.Open()
	if err != nil {
		return nil, err
	}
	if err := s.Login(t.User, t.Password); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.Idle(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Len is the number of sessions in the set.
func (s *IdleSet) Len() int { return len(s.sessions) }

// Close closes every session.
func (s *IdleSet) Close() {
	closeAll(s.sessions)
	s.sessions = nil
}

// FloodStats is the outcome of Flood.
type FloodStats struct {
	Refused  int // closed by the server before it sent a byte
	Errors   int // failed to connect, or not refused
	FirstErr error
	Elapsed  time.Duration
}

// Rate is refusals per second.
func (f FloodStats) Rate() float64 {
	if f.Elapsed <= 0 {
		return 0
	}
	return float64(f.Refused) / f.Elapsed.Seconds()
}

// Flood opens bare TCP connections to addr from src, from workers goroutines,
// until d has passed, and waits on each for the server to close it. A
// connection the server keeps open for refusalWait, or answers, is an error:
// the source was not refused.
func Flood(addr string, src netip.Addr, workers int, d time.Duration) FloodStats {
	return floodLoop(workers, 0, d, func() error { return Refused(addr, src) })
}

// floodLoop calls attempt from workers goroutines until d has passed, at rate
// calls per second in all (0: as fast as they can), counting successes as
// Refused. It is the loop both floods share.
func floodLoop(workers int, rate float64, d time.Duration, attempt func() error) FloodStats {
	var (
		mu  sync.Mutex
		all FloodStats
		wg  sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var own FloodStats
			for i := 0; time.Now().Before(deadline); i++ {
				// Paced: this worker's share of the attempts due by now.
				for rate > 0 && float64(i) >= time.Since(start).Seconds()*rate/float64(workers) {
					time.Sleep(time.Millisecond)
				}
				if err := attempt(); err != nil {
					own.Errors++
					own.FirstErr = keepFirst(own.FirstErr, err)
					continue
				}
				own.Refused++
			}
			mu.Lock()
			all.Refused += own.Refused
			all.Errors += own.Errors
			all.FirstErr = keepFirst(all.FirstErr, own.FirstErr)
			mu.Unlock()
		}()
	}
	wg.Wait()
	all.Elapsed = time.Since(start)
	return all
}

// Refused connects once from src and returns nil when the server closes the
// connection before sending anything, within refusalWait.
func Refused(addr string, src netip.Addr) error {
	c, err := dialTCP(addr, src, 5*time.Second)
	if errors.Is(err, syscall.ECONNRESET) {
		return nil // reset (SO_LINGER 0) before connect even completed
	}
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(refusalWait))
	var b [1]byte
	n, err := c.Read(b[:])
	switch {
	case n == 0 && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)):
		return nil
	case err != nil && !errors.Is(err, io.EOF):
		return fmt.Errorf("%w: %w", errNotRefused, err)
	default:
		return errNotRefused
	}
}
