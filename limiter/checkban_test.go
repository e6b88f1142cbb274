package limiter

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

func TestCheckBan(t *testing.T) {
	allow := func(b *conf.Bans, _ *conf.Limits) {
		b.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/28"), netip.MustParsePrefix("::1/128")}
		b.MaxBan = conf.D(168 * time.Hour)
	}
	tests := []struct {
		ip   string
		d    time.Duration
		mod  func(*conf.Bans, *conf.Limits)
		want error
	}{
		{"192.0.2.99", time.Hour, allow, nil},
		{"192.0.2.99", 0, allow, nil}, // bans.ban
		{"192.0.2.99", 168 * time.Hour, allow, nil},
		{"192.0.2.99", 168*time.Hour + time.Second, allow, ErrBanTooLong},
		{"192.0.2.99", 2000000 * time.Hour, allow, ErrBanTooLong},
		{"192.0.2.3", time.Hour, allow, ErrNotEnforced},
		{"::ffff:192.0.2.3", time.Hour, allow, ErrNotEnforced},
		{"::1", time.Hour, allow, ErrNotEnforced},
		{"192.0.2.99", time.Hour, func(b *conf.Bans, _ *conf.Limits) { b.Enabled = false }, ErrNotEnforced},
	}
	for _, tt := range tests {
		l, _ := newTest(t, tt.mod, Options{})
		if err := l.CheckBan(addr(tt.ip), tt.d); !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
			t.Errorf("CheckBan(%s, %v) = %v, want %v", tt.ip, tt.d, err, tt.want)
		}
	}
	l, _ := newTest(t, allow, Options{})
	if err := l.CheckBan(addr("192.0.2.3"), time.Hour); err == nil || err.Error() != "the ban would not be enforced: 192.0.2.3 is in bans.allow (192.0.2.0/28)" {
		t.Errorf("CheckBan(allowed) = %v, want the reason naming the allow entry", err)
	}
}
