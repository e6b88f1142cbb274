package main

import (
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a strings.Builder safe for the flush timer's goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestLogWriter: buffered lines reach the output in order within a few flush
// intervals, not one write each; Close writes the rest, and lines after
// Close are written at once.
func TestLogWriter(t *testing.T) {
	var out lockedBuffer
	w := newLogWriter(&out)
	w.Write([]byte("one\n"))
	w.Write([]byte("two\n"))
	if got := out.String(); got != "" {
		t.Logf("written before the flush interval: %q (a slow machine)", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for out.String() != "one\ntwo\n" {
		if time.Now().After(deadline) {
			t.Fatalf("after 5 s the output is %q", out.String())
		}
		time.Sleep(time.Millisecond)
	}
	w.Write([]byte("three\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "one\ntwo\nthree\n" {
		t.Fatalf("after Close: %q", got)
	}
	w.Write([]byte("four\n"))
	if got := out.String(); got != "one\ntwo\nthree\nfour\n" {
		t.Fatalf("a line after Close: %q", got)
	}
}
