package testbed

import (
	"testing"
	"time"
)

// WaitFor polls cond every 10 ms until it holds, failing the test when d
// passes first, and returns how long it took: tests wait on observable
// states with a deadline, never on a sleep.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}
