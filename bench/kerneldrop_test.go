package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestThreadsCPU reads this process's own threads: the nanosecond counter
// must grow by about the CPU a busy loop burns, far below a clock tick.
func TestThreadsCPU(t *testing.T) {
	c0, err := threadsCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); time.Since(start) < 3*time.Millisecond; {
	}
	c1, err := threadsCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// At least the part of the loop this thread was not preempted for; well
	// under the 10 ms /proc/PID/stat would show.
	if d := c1 - c0; d <= 0 || d%time.Millisecond == 0 {
		t.Fatalf("threadsCPU grew by %v over a 3 ms busy loop, want a positive, sub-millisecond-precise value", d)
	}
}

// TestKernelDropVerdict holds the report to the figure it is given: the added
// CPU per attempt decides, the gross figure is shown beside it.
func TestKernelDropVerdict(t *testing.T) {
	for _, tt := range []struct {
		added, gross float64
		want         []string
	}{
		{-0.02, 0.15, []string{"no measurable imapgw CPU: -0.0200", "at most 0.1500 µs", ": met."}},
		{0.05, 0.2, []string{"adds 0.0500 µs", "10000× less", ": met."}},
		{2, 2.5, []string{"adds 2.0000 µs", ": **missed**."}},
		{0.9, 1.2, []string{"adds 0.9000 µs", "556× less", ": met."}}, // 500 µs handshake
		{0.02, 0.1, []string{": met."}},
	} {
		r := newResults()
		r.add(nameImapgw, "flood.handshake.cpu", 500)
		r.add(nameImapgw, "flood.kernel", 5000)
		r.add(nameImapgw, "flood.kernel.cpu", tt.added)
		r.add(nameImapgw, "flood.kernel.gross", tt.gross)
		r.add(nameImapgw, "flood.kernel.noise", 0.01)
		got := floodTable(r)
		for _, w := range tt.want {
			if !strings.Contains(got, w) {
				t.Errorf("added %v, gross %v: report lacks %q:\n%s", tt.added, tt.gross, w, got)
			}
		}
	}
}
