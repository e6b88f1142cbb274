package main

import (
	"bufio"
	"io"
	"sync"
	"time"
)

// logFlushEvery bounds how long a log line waits in the buffer.
const logFlushEvery = 50 * time.Millisecond

// logWriter batches log lines: at info level every login writes two (the auth
// line and the session line), and a write syscall per line is a measurable
// part of a login's CPU under load (issue 16). Lines are written when the
// buffer fills, logFlushEvery after the first one waiting, and at Close; a
// reader of the log sees a line at most that late.
type logWriter struct {
	mu      sync.Mutex
	w       *bufio.Writer
	pending bool // a flush is scheduled
	closed  bool
}

func newLogWriter(w io.Writer) *logWriter {
	return &logWriter{w: bufio.NewWriterSize(w, 64<<10)}
}

func (l *logWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		n, err := l.w.Write(p)
		if err == nil {
			err = l.w.Flush()
		}
		return n, err
	}
	if !l.pending {
		l.pending = true
		time.AfterFunc(logFlushEvery, l.flushPending)
	}
	return l.w.Write(p)
}

func (l *logWriter) flushPending() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pending = false
	l.w.Flush()
}

// Close writes what is buffered; later lines are written at once.
func (l *logWriter) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	return l.w.Flush()
}
