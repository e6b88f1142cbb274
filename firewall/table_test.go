package firewall

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestElements: a prefix is one interval, its first address and (flagged as
// the end) the address after its last; the timeout rides on the start only,
// in whole milliseconds rounded up. This is the IPv6 /64 encoding the kernel
// tests below also check through nft.
func TestElements(t *testing.T) {
	cases := []struct {
		prefix, start, end string // end "" when the prefix ends the address space
	}{
		{"2001:db8:1:2::/64", "2001:db8:1:2::", "2001:db8:1:3::"},
		{"2001:db8:1:2:3:4:5:6/128", "2001:db8:1:2:3:4:5:6", "2001:db8:1:2:3:4:5:7"},
		{"2001:db8:0:ffff::/64", "2001:db8:0:ffff::", "2001:db8:1::"},
		{"10.1.2.3/32", "10.1.2.3", "10.1.2.4"},
		{"10.1.2.0/24", "10.1.2.0", "10.1.3.0"},
		{"10.1.255.255/32", "10.1.255.255", "10.2.0.0"},
		{"255.255.255.0/24", "255.255.255.0", ""},
		{"ffff:ffff:ffff:ffff::/64", "ffff:ffff:ffff:ffff::", ""},
	}
	for _, c := range cases {
		got := elements(netip.MustParsePrefix(c.prefix), 1500*time.Microsecond)
		want := 2
		if c.end == "" {
			want = 1
		}
		if len(got) != want {
			t.Fatalf("elements(%s) = %d elements, want %d", c.prefix, len(got), want)
		}
		if a, _ := netip.AddrFromSlice(got[0].Key); a.String() != c.start || got[0].IntervalEnd || got[0].Timeout != 2*time.Millisecond {
			t.Errorf("elements(%s)[0] = %s end=%v timeout %s, want %s end=false timeout 2ms", c.prefix, a, got[0].IntervalEnd, got[0].Timeout, c.start)
		}
		if c.end == "" {
			continue
		}
		if a, _ := netip.AddrFromSlice(got[1].Key); a.String() != c.end || !got[1].IntervalEnd || got[1].Timeout != 0 {
			t.Errorf("elements(%s)[1] = %s end=%v timeout %s, want %s end=true no timeout", c.prefix, a, got[1].IntervalEnd, got[1].Timeout, c.end)
		}
	}
	if got := elements(netip.MustParsePrefix("10.0.0.1/32"), -time.Second); got[0].Timeout != time.Millisecond {
		t.Errorf("a ban already over gets timeout %s, want the 1 ms floor (0 would mean forever)", got[0].Timeout)
	}
}

func TestUniquePorts(t *testing.T) {
	if got := uniquePorts([]uint16{993, 0, 143, 993}); !slices.Equal(got, []uint16{143, 993}) {
		t.Errorf("uniquePorts = %v, want [143 993]", got)
	}
}
