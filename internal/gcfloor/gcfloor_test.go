package gcfloor

import (
	"os"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	for _, tc := range []struct {
		live, floor uint64
		want        int64
	}{
		{0, 64 << 20, 1600},       // before the first collection: as for 4 MB
		{1 << 10, 64 << 20, 1600}, // nearly empty: as for 4 MB
		{8 << 20, 64 << 20, 800},  // small heap: may grow by the floor
		{32 << 20, 64 << 20, 200}, // half the floor
		{64 << 20, 64 << 20, 100}, // at the floor: the default
		{1 << 30, 64 << 20, 100},  // large heap: never below the default
		{6 << 20, 64 << 20, 1066}, // rounds down
	} {
		if got := Percent(tc.live, tc.floor); got != tc.want {
			t.Errorf("Percent(%d, %d) = %d, want %d", tc.live, tc.floor, got, tc.want)
		}
	}
}

// TestStartFollowsCollections runs real collections: with a small live heap
// the percentage goes up to let the heap grow by the floor, with a live heap
// above the floor it comes back to 100, and stop restores the start value.
func TestStartFollowsCollections(t *testing.T) {
	t.Setenv("GOGC", "100") // set by the operator: Start must not touch it
	before := gogc()
	stop := Start(DefaultFloor)
	runtime.GC()
	if p := gogc(); p != before {
		t.Fatalf("with GOGC set, Start changed the percentage from %d to %d", before, p)
	}
	stop()
	os.Unsetenv("GOGC") // t.Setenv restores it after the test

	stop = Start(16 << 20)
	waitPercent(t, func(p int) bool { return p > 150 }, "above 150 with a small live heap")

	big := make([][]byte, 48) // 48 MB live, above the 16 MB floor
	for i := range big {
		big[i] = make([]byte, 1<<20)
	}
	waitPercent(t, func(p int) bool { return p == 100 }, "100 with a live heap above the floor")
	runtime.KeepAlive(big)

	stop()
	if p := gogc(); p != before {
		t.Errorf("after stop the percentage is %d, want %d as before Start", p, before)
	}
}

// gogc reads the percentage in effect.
func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

func waitPercent(t *testing.T, ok func(int) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // the finalizer runs on its own goroutine
		if p := gogc(); ok(p) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GC percentage %d, want %s", gogc(), what)
		}
	}
}
