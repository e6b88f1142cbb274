package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
)

// results holds every measured value: peer, then metric key, then one value
// per round in the order measured; and notes about failures.
type results struct {
	mu    sync.Mutex
	vals  map[string]map[string][]float64
	tls   map[string]string // peer → negotiated version, suite, group
	notes []string
	// loadStart is /proc/loadavg's first three fields when the run began.
	loadStart string
}

// loadAverage is the machine's 1, 5 and 15 minute load average.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if err != nil || len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], ", ")
}

func newResults() *results {
	return &results{vals: map[string]map[string][]float64{}, tls: map[string]string{}}
}

func (r *results) add(peer, key string, v float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.vals[peer] == nil {
		r.vals[peer] = map[string][]float64{}
	}
	r.vals[peer][key] = append(r.vals[peer][key], v)
}

func (r *results) all(peer, key string) []float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.vals[peer][key])
}

// median of the rounds' values; false when none was measured.
func (r *results) median(peer, key string) (float64, bool) {
	return median(r.all(peer, key))
}

func median(v []float64) (float64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2], true
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2, true
}

func (r *results) setTLS(peer, desc string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tls[peer] = desc
}

func (r *results) note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}
