package limiter

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

// t0 is the start of every test's clock.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// clock is a settable Options.Now for the methods without an At form.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// logBuf collects log output; Run logs from its own goroutine.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *logBuf) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *logBuf) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

func (w *logBuf) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// defaults is the documented default policy.
func defaults() (conf.Bans, conf.Limits) {
	c := conf.Default()
	return c.Bans, c.Limits
}

// newTest builds a Limiter on the default config changed by mod, with a fixed
// jitter of zero, a discarded log unless o.Logger is set, and o.Now = clk.Now.
func newTest(t testing.TB, mod func(*conf.Bans, *conf.Limits), o Options) (*Limiter, *clock) {
	t.Helper()
	b, lim := defaults()
	if mod != nil {
		mod(&b, &lim)
	}
	clk := newClock()
	if o.Now == nil {
		o.Now = clk.Now
	}
	if o.Rand == nil {
		o.Rand = func() float64 { return 0 }
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	l, err := New(b, lim, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return l, clk
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// failN reports n failures for user from src at now, each with a new password,
// and returns the last verdict.
func failN(l *Limiter, now time.Time, src netip.Addr, user string, n int) Verdict {
	var v Verdict
	for i := range n {
		v = l.FailedAt(now, src, user, fmt.Appendf(nil, "wrong-%d", i))
	}
	return v
}

// admitErr is AdmitAt's error; the connection is released at once.
func admitErr(l *Limiter, now time.Time, src netip.Addr) error {
	release, err := l.AdmitAt(now, src)
	release()
	return err
}

// hold admits n connections and returns their releases, failing the test on refusal.
func hold(t *testing.T, l *Limiter, now time.Time, src netip.Addr, n int) []func() {
	t.Helper()
	var out []func()
	for i := range n {
		release, err := l.AdmitAt(now, src)
		if err != nil {
			t.Fatalf("AdmitAt(%v) #%d = %v, want nil", src, i+1, err)
		}
		out = append(out, release)
	}
	return out
}

// tryErr is TryAt's error; a reserved attempt is ended at once (Done), so
// only the rationing Try itself does (strangerAt) remains.
func tryErr(l *Limiter, now time.Time, src netip.Addr, user string) error {
	a, err := l.TryAt(now, src, user)
	a.Done()
	return err
}
