package limiter

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

func TestSourceKey(t *testing.T) {
	tests := []struct {
		in     string
		v4, v6 int
		want   string
	}{
		{"192.0.2.7", 32, 64, "192.0.2.7/32"},
		{"192.0.2.7", 24, 64, "192.0.2.0/24"},
		{"::ffff:192.0.2.7", 32, 64, "192.0.2.7/32"}, // IPv4-mapped counts as IPv4
		{"::ffff:192.0.2.7", 24, 64, "192.0.2.0/24"},
		{"2001:db8:1:2:3:4:5:6", 32, 64, "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff::1", 32, 64, "2001:db8:1:2::/64"}, // same /64, same key
		{"2001:db8:1:3::1", 32, 64, "2001:db8:1:3::/64"},      // next /64, other key
		{"2001:db8:1:2:3:4:5:6", 32, 48, "2001:db8:1::/48"},
		{"fe80::1%eth0", 32, 64, "fe80::/64"}, // zones do not split a source
	}
	for _, tt := range tests {
		if got := sourceKey(addr(tt.in), tt.v4, tt.v6); got != netip.MustParsePrefix(tt.want) {
			t.Errorf("sourceKey(%s, %d, %d) = %v, want %s", tt.in, tt.v4, tt.v6, got, tt.want)
		}
	}
}

func TestBurst(t *testing.T) {
	tests := []struct {
		rate float64
		want int
	}{{20, 20}, {0.5, 1}, {2.5, 3}, {1, 1}}
	for _, tt := range tests {
		if got := burst(tt.rate); got != tt.want {
			t.Errorf("burst(%g) = %d, want %d", tt.rate, got, tt.want)
		}
	}
}

func TestAdmitConnectionRate(t *testing.T) {
	tests := []struct {
		rate   float64
		burst  int
		refill time.Duration // time for one more token
	}{
		{20, 20, 50 * time.Millisecond},
		{0.5, 1, 2 * time.Second},
		{2.5, 3, 400 * time.Millisecond},
	}
	src := addr("192.0.2.1")
	for _, tt := range tests {
		l, _ := newTest(t, func(_ *conf.Bans, lim *conf.Limits) { lim.ConnectionRate = tt.rate }, Options{})
		for i := range tt.burst {
			if err := admitErr(l, t0, src); err != nil {
				t.Fatalf("rate %g: AdmitAt #%d = %v, want nil", tt.rate, i+1, err)
			}
		}
		if err := admitErr(l, t0, src); !errors.Is(err, ErrRate) {
			t.Errorf("rate %g: AdmitAt past burst = %v, want %v", tt.rate, err, ErrRate)
		}
		if err := admitErr(l, t0, addr("192.0.2.2")); err != nil {
			t.Errorf("rate %g: AdmitAt(other source) = %v, want nil", tt.rate, err)
		}
		later := t0.Add(tt.refill)
		if err := admitErr(l, later, src); err != nil {
			t.Errorf("rate %g: AdmitAt after %v = %v, want nil", tt.rate, tt.refill, err)
		}
		if err := admitErr(l, later, src); !errors.Is(err, ErrRate) {
			t.Errorf("rate %g: second AdmitAt after %v = %v, want %v", tt.rate, tt.refill, err, ErrRate)
		}
	}
}

func TestAdmitConcurrency(t *testing.T) {
	l, _ := newTest(t, func(_ *conf.Bans, lim *conf.Limits) {
		lim.MaxConnectionsPerSource = 2
		lim.MaxConnections = 3
	}, Options{})
	a, b, c := addr("192.0.2.1"), addr("198.51.100.1"), addr("203.0.113.1")
	heldA := hold(t, l, t0, a, 2)
	if err := admitErr(l, t0, a); !errors.Is(err, ErrSourceLimit) {
		t.Errorf("AdmitAt(%v) third = %v, want %v", a, err, ErrSourceLimit)
	}
	hold(t, l, t0, b, 1)
	if err := admitErr(l, t0, c); !errors.Is(err, ErrGatewayFull) {
		t.Errorf("AdmitAt(%v) with gateway full = %v, want %v", c, err, ErrGatewayFull)
	}
	heldA[0]()
	heldA[0]() // a second release must not free a second slot
	if got := l.Source(a).Connections; got != 1 {
		t.Errorf("Source(%v).Connections after release = %d, want 1", a, got)
	}
	hold(t, l, t0, c, 1)
	if err := admitErr(l, t0, c); !errors.Is(err, ErrGatewayFull) {
		t.Errorf("AdmitAt(%v) after double release = %v, want %v", c, err, ErrGatewayFull)
	}
}

func TestAdmitRefusalReleaseIsNoop(t *testing.T) {
	l, _ := newTest(t, func(_ *conf.Bans, lim *conf.Limits) { lim.MaxConnections = 1 }, Options{})
	hold(t, l, t0, addr("192.0.2.1"), 1)
	release, err := l.AdmitAt(t0, addr("192.0.2.2"))
	if !errors.Is(err, ErrGatewayFull) {
		t.Fatalf("AdmitAt(full) = %v, want %v", err, ErrGatewayFull)
	}
	release() // must not give back the slot it never took
	if err := admitErr(l, t0, addr("192.0.2.3")); !errors.Is(err, ErrGatewayFull) {
		t.Errorf("AdmitAt after a refused release = %v, want %v", err, ErrGatewayFull)
	}
}

func TestAdmitSourceTableBounded(t *testing.T) {
	l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) { b.MaxTracked = 16 }, Options{})
	for i := range 16 {
		hold(t, l, t0, netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 1)
	}
	if err := admitErr(l, t0, addr("198.51.100.1")); !errors.Is(err, ErrGatewayFull) {
		t.Errorf("AdmitAt(17th connected source, max_tracked 16) = %v, want %v", err, ErrGatewayFull)
	}
	if err := admitErr(l, t0, addr("192.0.2.0")); err != nil {
		t.Errorf("AdmitAt(already connected source) = %v, want nil", err)
	}
}

func TestAllowlist(t *testing.T) {
	l, _ := newTest(t, func(b *conf.Bans, lim *conf.Limits) {
		b.Allow = append(b.Allow, netip.MustParsePrefix("198.51.100.0/24"))
		lim.ConnectionRate = 1
		lim.MaxConnectionsPerSource = 1
		lim.MaxConnections = 20
	}, Options{})
	for _, s := range []string{"127.0.0.1", "::1", "198.51.100.9", "::ffff:198.51.100.9"} {
		src := addr(s)
		held := hold(t, l, t0, src, 5) // past both the rate and the per-source cap
		if v := failN(l, t0, src, "alice", 50); v.Banned {
			t.Errorf("FailedAt(%v) ×50 = %+v, want not banned", src, v)
		}
		if err := tryErr(l, t0, src, "alice"); err != nil {
			t.Errorf("TryAt(%v) = %v, want nil", src, err)
		}
		l.AddBanAt(t0, src, time.Hour, "test")
		if err := admitErr(l, t0, src); err != nil {
			t.Errorf("AdmitAt(%v) with a manual ban = %v, want nil", src, err)
		}
		for _, r := range held {
			r()
		}
	}
	// max_connections still applies to allow-listed sources.
	hold(t, l, t0, addr("127.0.0.1"), 20)
	if err := admitErr(l, t0, addr("127.0.0.2")); !errors.Is(err, ErrGatewayFull) {
		t.Errorf("AdmitAt(allow-listed, gateway full) = %v, want %v", err, ErrGatewayFull)
	}
}

func TestBansDisabled(t *testing.T) {
	l, _ := newTest(t, func(b *conf.Bans, lim *conf.Limits) {
		b.Enabled = false
		lim.MaxConnectionsPerSource = 1
	}, Options{})
	src := addr("192.0.2.1")
	v := failN(l, t0, src, "alice", 100)
	if v.Banned || v.Delay != 2*time.Second {
		t.Errorf("FailedAt ×100 with bans disabled = %+v, want Delay 2s, not banned", v)
	}
	l.AddBanAt(t0, src, time.Hour, "test")
	if err := tryErr(l, t0, src, "alice"); err != nil {
		t.Errorf("TryAt with bans disabled = %v, want nil", err)
	}
	held := hold(t, l, t0, src, 1)
	if err := admitErr(l, t0, src); !errors.Is(err, ErrSourceLimit) {
		t.Errorf("AdmitAt over per-source cap with bans disabled = %v, want %v", err, ErrSourceLimit)
	}
	held[0]()
	for range 20 {
		admitErr(l, t0, src)
	}
	if err := admitErr(l, t0, src); !errors.Is(err, ErrRate) {
		t.Errorf("AdmitAt over rate with bans disabled = %v, want %v", err, ErrRate)
	}
}

func TestUpdate(t *testing.T) {
	l, _ := newTest(t, nil, Options{})
	b, lim := defaults()
	src := addr("192.0.2.1")

	hold(t, l, t0, src, 2)
	lim.MaxConnectionsPerSource = 2
	lim.ConnectionRate = 1
	l.Update(b, lim)
	if err := admitErr(l, t0, src); !errors.Is(err, ErrSourceLimit) {
		t.Errorf("AdmitAt after max_connections_per_source 2 = %v, want %v", err, ErrSourceLimit)
	}
	other := addr("192.0.2.2")
	hold(t, l, t0, other, 1)
	if err := admitErr(l, t0, other); !errors.Is(err, ErrRate) {
		t.Errorf("AdmitAt after connection_rate 1 = %v, want %v", err, ErrRate)
	}

	b.SourceFailures = 3
	l.Update(b, lim)
	if v := failN(l, t0, src, "alice", 3); !v.Banned || v.Reason != ReasonFailures {
		t.Errorf("FailedAt ×3 after source_failures 3 = %+v, want banned for %q", v, ReasonFailures)
	}

	b.Enabled = false
	l.Update(b, lim)
	if err := tryErr(l, t0, src, "alice"); err != nil {
		t.Errorf("TryAt after enabled = false = %v, want nil", err)
	}
	b.Enabled = true
	l.Update(b, lim)
	if err := tryErr(l, t0, src, "alice"); !errors.Is(err, ErrRefused) {
		t.Errorf("TryAt after enabled = true again = %v, want %v (state kept)", err, ErrRefused)
	}
}

func TestUpdatePrefixKeepsBans(t *testing.T) {
	l, _ := newTest(t, nil, Options{})
	b, lim := defaults()
	failN(l, t0, addr("2001:db8:1:2::1"), "alice", 10)
	b.SourcePrefixV6 = 48
	l.Update(b, lim)
	if err := admitErr(l, t0, addr("2001:db8:1:2::99")); !errors.Is(err, ErrBanned) {
		t.Errorf("AdmitAt(in the /64 banned before /48) = %v, want %v", err, ErrBanned)
	}
	if err := admitErr(l, t0, addr("2001:db8:1:3::1")); err != nil {
		t.Errorf("AdmitAt(other /64 of the /48) = %v, want nil", err)
	}
	failN(l, t0, addr("2001:db8:1:3::1"), "bob", 10)
	if err := admitErr(l, t0, addr("2001:db8:1:ffff::1")); !errors.Is(err, ErrBanned) {
		t.Errorf("AdmitAt(in a /48 banned after the change) = %v, want %v", err, ErrBanned)
	}
}
