package limiter

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

func TestBanLength(t *testing.T) {
	tests := []struct {
		strikes     int
		first, most time.Duration
		want        time.Duration
	}{
		{1, 15 * time.Minute, 168 * time.Hour, 15 * time.Minute},
		{2, 15 * time.Minute, 168 * time.Hour, time.Hour},
		{3, 15 * time.Minute, 168 * time.Hour, 4 * time.Hour},
		{4, 15 * time.Minute, 168 * time.Hour, 16 * time.Hour},
		{5, 15 * time.Minute, 168 * time.Hour, 64 * time.Hour},
		{6, 15 * time.Minute, 168 * time.Hour, 168 * time.Hour},
		{60, 15 * time.Minute, 168 * time.Hour, 168 * time.Hour},
		{1, time.Hour, 2 * time.Hour, time.Hour},
		{2, time.Hour, 2 * time.Hour, 2 * time.Hour},
	}
	for _, tt := range tests {
		if got := banLength(tt.strikes, tt.first, tt.most); got != tt.want {
			t.Errorf("banLength(%d, %v, %v) = %v, want %v", tt.strikes, tt.first, tt.most, got, tt.want)
		}
	}
}

// TestBanLadder bans one source again each time its ban ends.
func TestBanLadder(t *testing.T) {
	l, _ := newTest(t, nil, Options{})
	src := addr("192.0.2.1")
	want := []time.Duration{15 * time.Minute, time.Hour, 4 * time.Hour, 16 * time.Hour,
		64 * time.Hour, 168 * time.Hour, 168 * time.Hour}
	now := t0
	for i, d := range want {
		if v := failN(l, now, src, "alice", 9); v.Banned {
			t.Fatalf("round %d: 9 failures = %+v, want not banned", i+1, v)
		}
		v := l.FailedAt(now, src, "alice", []byte("tenth"))
		if !v.Banned || v.Reason != ReasonFailures || v.Until.Sub(now) != d {
			t.Errorf("round %d: 10th failure = %+v, want banned %v for %q", i+1, v, d, ReasonFailures)
		}
		if s := l.SourceAt(now, src); s.Strikes != i+1 || s.Ban == nil {
			t.Errorf("round %d: SourceAt = %+v, want strikes %d and a ban", i+1, s, i+1)
		}
		if err := admitErr(l, v.Until.Add(-time.Nanosecond), src); !errors.Is(err, ErrBanned) {
			t.Errorf("round %d: AdmitAt just before the end = %v, want %v", i+1, err, ErrBanned)
		}
		now = v.Until
		if err := admitErr(l, now, src); err != nil {
			t.Errorf("round %d: AdmitAt at the end = %v, want nil", i+1, err)
		}
	}
}

func TestStrikeMemory(t *testing.T) {
	tests := []struct {
		after time.Duration // after the first ban ended
		want  time.Duration
	}{
		{168*time.Hour - time.Second, time.Hour},
		{168 * time.Hour, 15 * time.Minute},
	}
	for _, tt := range tests {
		l, _ := newTest(t, nil, Options{})
		src := addr("192.0.2.1")
		first := failN(l, t0, src, "alice", 10)
		now := first.Until.Add(tt.after)
		if v := failN(l, now, src, "alice", 10); v.Until.Sub(now) != tt.want {
			t.Errorf("ban %v after the first ended = %v, want %v", tt.after, v.Until.Sub(now), tt.want)
		}
	}
}

func TestSourceFailures(t *testing.T) {
	tests := []struct {
		name    string
		gaps    []time.Duration // between consecutive failures
		banned  bool
		failing int // distinct failures remembered at the end
	}{
		{"nine in the window", repeat(9, time.Minute), false, 9},
		{"ten in the window", repeat(10, time.Minute), true, 0},
		{"ten over more than the window", repeat(10, 7*time.Minute), false, 9},
	}
	for _, tt := range tests {
		l, _ := newTest(t, nil, Options{})
		src, now := addr("192.0.2.1"), t0
		var v Verdict
		for i, gap := range tt.gaps {
			now = now.Add(gap)
			v = l.FailedAt(now, src, "alice", fmt.Appendf(nil, "pw%d", i))
		}
		if v.Banned != tt.banned {
			t.Errorf("%s: last Verdict = %+v, want banned %v", tt.name, v, tt.banned)
		}
		if got := l.SourceAt(now, src).Failures; got != tt.failing {
			t.Errorf("%s: SourceAt.Failures = %d, want %d", tt.name, got, tt.failing)
		}
	}
}

func repeat(n int, d time.Duration) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = d
	}
	return out
}

func TestSpray(t *testing.T) {
	tests := []struct {
		accounts int
		banned   bool
	}{{3, false}, {4, true}}
	for _, tt := range tests {
		l, _ := newTest(t, nil, Options{})
		src := addr("192.0.2.1")
		var v Verdict
		for i := range tt.accounts {
			v = l.FailedAt(t0, src, fmt.Sprintf("user%d", i), []byte("Summer2025!"))
		}
		if v.Banned != tt.banned || (tt.banned && v.Reason != ReasonSpray) {
			t.Errorf("one failure on each of %d accounts = %+v, want banned %v (%q)", tt.accounts, v, tt.banned, ReasonSpray)
		}
	}
}

func TestStalePasswordCountedOnce(t *testing.T) {
	l, _ := newTest(t, nil, Options{})
	phone := addr("192.0.2.1")
	for i := range 50 {
		now := t0.Add(time.Duration(i) * time.Second)
		if v := l.FailedAt(now, phone, "alice", []byte("old password")); v.Banned || v.Delay != 2*time.Second {
			t.Fatalf("FailedAt(same password) #%d = %+v, want Delay 2s, not banned", i+1, v)
		}
	}
	if got := l.SourceAt(t0, phone).Failures; got != 1 {
		t.Errorf("SourceAt.Failures after one password ×50 = %d, want 1", got)
	}
	// Case variants are one account; another password is another failure.
	l.FailedAt(t0, phone, "ALICE", []byte("old password"))
	l.FailedAt(t0, phone, "alice", []byte("older password"))
	if got := l.SourceAt(t0, phone).Failures; got != 2 {
		t.Errorf("SourceAt.Failures after a case variant and a new password = %d, want 2", got)
	}
}

func TestFailedDelay(t *testing.T) {
	tests := []struct {
		rand float64
		want time.Duration
	}{{0, 2 * time.Second}, {0.5, 2500 * time.Millisecond}, {0.999, 2999 * time.Millisecond}}
	for _, tt := range tests {
		l, _ := newTest(t, nil, Options{Rand: func() float64 { return tt.rand }})
		if got := l.FailedAt(t0, addr("192.0.2.1"), "alice", []byte("x")).Delay; got != tt.want {
			t.Errorf("FailedAt with jitter %g: Delay = %v, want %v", tt.rand, got, tt.want)
		}
	}
}

func TestSucceededForgives(t *testing.T) {
	l, _ := newTest(t, nil, Options{})
	src := addr("192.0.2.1")
	failN(l, t0, src, "bob", 1)
	failN(l, t0, src, "alice", 8)
	l.SucceededAt(t0, src, "alice")
	if got := l.SourceAt(t0, src).Failures; got != 1 {
		t.Errorf("SourceAt.Failures after alice's success = %d, want 1 (bob's stays)", got)
	}
	if v := failN(l, t0, src, "alice", 8); v.Banned {
		t.Errorf("8 more failures after forgiveness = %+v, want not banned", v)
	}
	if v := l.FailedAt(t0, src, "alice", []byte("one more")); !v.Banned {
		t.Errorf("10th failure since forgiveness = %+v, want banned", v)
	}
}

func TestBanExpiry(t *testing.T) {
	l, clk := newTest(t, nil, Options{})
	src := addr("192.0.2.1")
	v := failN(l, t0, src, "alice", 10)
	if !v.Banned {
		t.Fatalf("10 failures = %+v, want banned", v)
	}
	if err := tryErr(l, t0, src, "alice"); !errors.Is(err, ErrRefused) || !errors.Is(err, ErrBanned) {
		t.Errorf("TryAt while banned = %v, want %v and %v", err, ErrRefused, ErrBanned)
	}
	if got := l.FailedAt(t0, src, "alice", []byte("late")); !got.Banned || !got.Until.Equal(v.Until) {
		t.Errorf("FailedAt while banned = %+v, want the running ban until %v", got, v.Until)
	}
	clk.Set(v.Until)
	if err := tryErr(l, v.Until, src, "alice"); err != nil {
		t.Errorf("TryAt at the end of the ban = %v, want nil", err)
	}
	if got := l.Bans(); len(got) != 0 {
		t.Errorf("Bans() after expiry = %v, want none", got)
	}
	if s := l.Source(src); s.Ban != nil || s.Strikes != 1 {
		t.Errorf("Source after expiry = %+v, want no ban, 1 strike", s)
	}
}

func TestIPv6Aggregation(t *testing.T) {
	l, _ := newTest(t, nil, Options{})
	a, b := addr("2001:db8:1:2::a"), addr("2001:db8:1:2:ffff:ffff:ffff:ffff")
	failN(l, t0, a, "alice", 5)
	v := l.FailedAt(t0, b, "alice", []byte("other")) // 6th failure of the /64
	if got := l.SourceAt(t0, a).Failures; got != 6 || v.Banned {
		t.Fatalf("SourceAt(a).Failures = %d (verdict %+v), want 6 shared with b, not banned", got, v)
	}
	failN(l, t0, b, "alice", 4) // passwords wrong-0..3 repeat a's: counted once
	if got := l.SourceAt(t0, b).Failures; got != 6 {
		t.Errorf("SourceAt(b).Failures after repeats = %d, want 6", got)
	}
	for i := range 4 {
		v = l.FailedAt(t0, b, "alice", fmt.Appendf(nil, "b-%d", i))
	}
	if !v.Banned || v.Reason != ReasonFailures {
		t.Errorf("10th distinct failure in the /64 = %+v, want banned", v)
	}
	tests := []struct {
		src  string
		want error
	}{
		{"2001:db8:1:2::a", ErrBanned},
		{"2001:db8:1:2::1234", ErrBanned},
		{"2001:db8:1:3::a", nil},
		{"2001:db8:2:2::a", nil},
	}
	for _, tt := range tests {
		if err := admitErr(l, t0, addr(tt.src)); !errors.Is(err, tt.want) {
			t.Errorf("AdmitAt(%s) = %v, want %v", tt.src, err, tt.want)
		}
	}
}

func TestIPv4Mapped(t *testing.T) {
	l, _ := newTest(t, func(_ *conf.Bans, lim *conf.Limits) { lim.MaxConnectionsPerSource = 1 }, Options{})
	mapped, plain := addr("::ffff:192.0.2.9"), addr("192.0.2.9")
	held := hold(t, l, t0, mapped, 1)
	if err := admitErr(l, t0, plain); !errors.Is(err, ErrSourceLimit) {
		t.Errorf("AdmitAt(%v) with %v connected = %v, want %v", plain, mapped, err, ErrSourceLimit)
	}
	held[0]()
	v := failN(l, t0, mapped, "alice", 10)
	if !v.Banned {
		t.Fatalf("10 failures from %v = %+v, want banned", mapped, v)
	}
	if got := l.BansAt(t0); len(got) != 1 || got[0].Prefix.String() != "192.0.2.9/32" {
		t.Errorf("BansAt = %v, want one ban on 192.0.2.9/32", got)
	}
	for _, a := range []string{"192.0.2.9", "::ffff:192.0.2.9"} {
		if err := admitErr(l, t0, addr(a)); !errors.Is(err, ErrBanned) {
			t.Errorf("AdmitAt(%s) = %v, want %v", a, err, ErrBanned)
		}
	}
}

func TestProtectedMode(t *testing.T) {
	logs := &logBuf{}
	l, _ := newTest(t, nil, Options{Logger: logs.logger()})
	owner, ownerNeighbour := addr("198.51.100.7"), addr("198.51.100.200")
	owner6 := addr("2001:db8:aa:bb::1")
	stranger1, stranger2 := addr("192.0.2.50"), addr("192.0.2.51")
	l.SucceededAt(t0.Add(-24*time.Hour), owner, "alice")
	l.SucceededAt(t0.Add(-24*time.Hour), addr("2001:db8:aa:bb::2"), "alice")
	l.SucceededAt(t0.Add(-24*time.Hour), stranger1, "bob") // known-good for bob only

	// 20 sources, one failure each: no source is banned, the account is protected.
	for i := range 20 {
		src := addr(fmt.Sprintf("203.0.113.%d", i+1))
		if v := l.FailedAt(t0, src, "alice", []byte("guess")); v.Banned {
			t.Fatalf("FailedAt(%v) = %+v, want not banned", src, v)
		}
	}
	if !strings.Contains(logs.String(), "account protected") || !strings.Contains(logs.String(), "user=alice") {
		t.Errorf("log = %q, want an account-protected line for alice", logs.String())
	}

	now := t0.Add(time.Second)
	steps := []struct {
		at   time.Duration
		src  netip.Addr
		user string
		want error
	}{
		{0, owner, "alice", nil},
		{0, owner, "alice", nil},          // known-good sources are not rationed
		{0, ownerNeighbour, "alice", nil}, // same /24
		{0, owner6, "alice", nil},         // same /56
		{0, stranger1, "alice", nil},      // this minute's attempt for all strangers
		{0, stranger2, "alice", ErrRefused},
		{30 * time.Second, stranger1, "alice", ErrRefused},
		{0, stranger2, "bob", nil}, // other accounts are not affected
		{time.Minute, stranger2, "alice", nil},
		{time.Minute, stranger1, "alice", ErrRefused},
		{25 * time.Hour, stranger1, "alice", nil}, // protection over
		{25 * time.Hour, stranger2, "alice", nil},
	}
	for i, s := range steps {
		if err := tryErr(l, now.Add(s.at), s.src, s.user); !errors.Is(err, s.want) {
			t.Errorf("step %d: TryAt(+%v, %v, %s) = %v, want %v", i, s.at, s.src, s.user, err, s.want)
		}
	}
}

func TestKnownGoodExpires(t *testing.T) {
	l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) { b.AccountFailures = 1 }, Options{})
	owner := addr("198.51.100.7")
	l.SucceededAt(t0.Add(-31*24*time.Hour), owner, "alice")
	l.FailedAt(t0, addr("192.0.2.1"), "alice", []byte("guess"))
	tryErr(l, t0, addr("192.0.2.2"), "alice") // takes this minute's attempt
	if err := tryErr(l, t0, owner, "alice"); !errors.Is(err, ErrRefused) {
		t.Errorf("TryAt(owner, success 31 days ago) = %v, want %v", err, ErrRefused)
	}
}
