package limiter

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/imapgw/imapgw/conf"
)

func TestAddBan(t *testing.T) {
	tests := []struct {
		ip, reason string
		d          time.Duration
		want       Ban
	}{
		{"2001:db8::1", "abuse feed", time.Hour, Ban{Prefix: netip.MustParsePrefix("2001:db8::/64"),
			Since: t0, Until: t0.Add(time.Hour), Reason: "abuse feed", Source: SourceManual}},
		{"::ffff:192.0.2.1", "", 0, Ban{Prefix: netip.MustParsePrefix("192.0.2.1/32"),
			Since: t0, Until: t0.Add(15 * time.Minute), Reason: ReasonManual, Source: SourceManual}},
	}
	for _, tt := range tests {
		l, _ := newTest(t, nil, Options{})
		if got := l.AddBan(addr(tt.ip), tt.d, tt.reason); got != tt.want {
			t.Errorf("AddBan(%s, %v, %q) = %+v, want %+v", tt.ip, tt.d, tt.reason, got, tt.want)
		}
		if got := l.Bans(); len(got) != 1 || got[0] != tt.want {
			t.Errorf("Bans() after AddBan(%s) = %+v, want [%+v]", tt.ip, got, tt.want)
		}
		if err := admitErr(l, t0, addr(tt.ip)); !errors.Is(err, ErrBanned) {
			t.Errorf("AdmitAt(%s) after AddBan = %v, want %v", tt.ip, err, ErrBanned)
		}
	}
}

func TestAddBanKeepsStrikes(t *testing.T) {
	l, _ := newTest(t, nil, Options{})
	src := addr("192.0.2.1")
	v := failN(l, t0, src, "alice", 10)
	if b := l.AddBanAt(v.Until, src, time.Hour, "again"); b.Strikes != 1 {
		t.Errorf("AddBanAt after one automatic ban: Strikes = %d, want 1", b.Strikes)
	}
	if v := failN(l, t0.Add(2*time.Hour), src, "alice", 10); v.Until.Sub(t0.Add(2*time.Hour)) != time.Hour {
		t.Errorf("automatic ban after a manual one lasts %v, want 1h (second strike)", v.Until.Sub(t0.Add(2*time.Hour)))
	}
}

func TestLiftBan(t *testing.T) {
	l, _ := newTest(t, nil, Options{})
	src := addr("2001:db8::1")
	failN(l, t0, src, "alice", 10)
	v := failN(l, t0.Add(time.Hour), src, "alice", 10) // second strike
	if !v.Banned {
		t.Fatalf("second round = %+v, want banned", v)
	}
	if !l.LiftBanAt(t0.Add(time.Hour), addr("2001:db8::77")) {
		t.Fatalf("LiftBanAt(same /64) = false, want true")
	}
	if l.LiftBanAt(t0.Add(time.Hour), src) {
		t.Errorf("LiftBanAt(no ban) = true, want false")
	}
	now := t0.Add(time.Hour)
	if err := admitErr(l, now, src); err != nil {
		t.Errorf("AdmitAt after LiftBan = %v, want nil", err)
	}
	if s := l.SourceAt(now, src); s.Strikes != 0 || s.Failures != 0 {
		t.Errorf("SourceAt after LiftBan = %+v, want strikes and failures forgotten", s)
	}
	if v := failN(l, now, src, "alice", 10); v.Until.Sub(now) != 15*time.Minute {
		t.Errorf("ban after LiftBan lasts %v, want the first step 15m", v.Until.Sub(now))
	}
}

func TestBansSorted(t *testing.T) {
	l, _ := newTest(t, nil, Options{})
	for _, ip := range []string{"2001:db8::1", "198.51.100.1", "192.0.2.1", "10.0.0.1"} {
		l.AddBan(addr(ip), time.Hour, "")
	}
	var got []string
	for _, b := range l.Bans() {
		got = append(got, b.Prefix.String())
	}
	want := "10.0.0.1/32 192.0.2.1/32 198.51.100.1/32 2001:db8::/64"
	if strings.Join(got, " ") != want {
		t.Errorf("Bans() = %v, want %s", got, want)
	}
}

func TestBanTableFullDropsSoonestEnding(t *testing.T) {
	logs := &logBuf{}
	l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) { b.MaxTracked = 16 }, Options{Logger: logs.logger()})
	for i := range 16 {
		l.AddBanAt(t0, netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), time.Duration(i+1)*time.Hour, "")
	}
	l.AddBanAt(t0, addr("198.51.100.1"), 30*time.Minute, "")
	bans := l.BansAt(t0)
	if len(bans) != 16 {
		t.Fatalf("BansAt with max_tracked 16 has %d bans, want 16", len(bans))
	}
	if err := admitErr(l, t0, addr("192.0.2.0")); err != nil {
		t.Errorf("AdmitAt(ban ending soonest, dropped) = %v, want nil", err)
	}
	for _, ip := range []string{"192.0.2.1", "192.0.2.15", "198.51.100.1"} {
		if err := admitErr(l, t0, addr(ip)); !errors.Is(err, ErrBanned) {
			t.Errorf("AdmitAt(%s) = %v, want %v", ip, err, ErrBanned)
		}
	}
	if !strings.Contains(logs.String(), "dropped the ban ending soonest") || !strings.Contains(logs.String(), "192.0.2.0/32") {
		t.Errorf("log = %q, want the dropped ban reported", logs.String())
	}
}

// TestFloodKeepsBans: a flood of new sources evicts counters, never bans.
func TestFloodKeepsBans(t *testing.T) {
	l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) { b.MaxTracked = 16 }, Options{})
	banned := addr("192.0.2.1")
	failN(l, t0, banned, "alice", 10)
	for i := range 5000 {
		src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		admitErr(l, t0, src)
		l.FailedAt(t0, src, fmt.Sprint("user", i), []byte("pw"))
	}
	if err := admitErr(l, t0, banned); !errors.Is(err, ErrBanned) {
		t.Errorf("AdmitAt(banned) after a flood of 5000 sources = %v, want %v", err, ErrBanned)
	}
	if err := l.checkBounds(); err != nil {
		t.Error(err)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	l, _ := newTest(t, nil, Options{Registerer: reg})
	failN(l, t0, addr("192.0.2.1"), "alice", 10)
	for i := range 4 {
		l.FailedAt(t0, addr("192.0.2.2"), fmt.Sprint("user", i), []byte("pw"))
	}
	l.AddBan(addr("192.0.2.3"), time.Hour, "operator text is not a label")
	got := gather(t, reg)
	want := map[string]float64{
		"imapgw_bans":                          3,
		`imapgw_bans_total{reason="failures"}`: 1,
		`imapgw_bans_total{reason="spray"}`:    1,
		`imapgw_bans_total{reason="manual"}`:   1,
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("metric %s = %v, want %v", k, got[k], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("metrics = %v, want exactly %v", got, want)
	}
	if _, err := New(conf.Default().Bans, conf.Default().Limits, Options{Registerer: reg}); err == nil {
		t.Errorf("New with the same registry twice: err = nil, want a registration error")
	}
}

// gather flattens a registry into "name{label=value}" → value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			out[mf.GetName()+labels(m)] = value(m)
		}
	}
	return out
}

func labels(m *dto.Metric) string {
	if len(m.GetLabel()) == 0 {
		return ""
	}
	var parts []string
	for _, lp := range m.GetLabel() {
		parts = append(parts, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func value(m *dto.Metric) float64 {
	if m.GetCounter() != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

// TestLogLines: bans, lifts and protection are logged, and no password is.
func TestLogLines(t *testing.T) {
	logs := &logBuf{}
	l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) { b.AccountFailures = 3 }, Options{Logger: logs.logger()})
	src := addr("192.0.2.1")
	const secret = "correct horse battery staple"
	for i := range 10 {
		l.FailedAt(t0, src, "alice", fmt.Appendf(nil, "%s %d", secret, i))
	}
	l.LiftBanAt(t0, src)
	out := logs.String()
	for _, want := range []string{
		`msg="source banned" prefix=192.0.2.1/32 reason=failures source=auto until=`,
		`strikes=1`,
		`msg="ban lifted" prefix=192.0.2.1/32`,
		`msg="account protected`, `user=alice`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "horse") {
		t.Errorf("log contains the password:\n%s", out)
	}
}
