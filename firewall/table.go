package firewall

import (
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Names inside the table. The table is imapgw's alone: anything else in it is
// replaced at start.
const (
	setV4     = "banned_v4"
	setV6     = "banned_v6"
	chainName = "input"
	// chainPriority runs the chain before the usual filter chains (priority
	// filter, 0), so an accept there cannot let a banned source through first.
	chainPriority = -10
	// perMessage bounds the elements in one netlink message: a nested
	// attribute's length is 16 bits, and an IPv6 element with its interval
	// end and timeout takes about 100 bytes.
	perMessage = 256
)

// layout is the table's objects, built for one batch (nftables set IDs only
// mean something within the batch that creates the set).
type layout struct {
	table *nftables.Table
	v4    *nftables.Set
	v6    *nftables.Set
}

func newLayout(name string) layout {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
	set := func(n string, kt nftables.SetDatatype) *nftables.Set {
		return &nftables.Set{Table: t, Name: n, KeyType: kt, Interval: true, HasTimeout: true}
	}
	return layout{table: t, v4: set(setV4, nftables.TypeIPAddr), v6: set(setV6, nftables.TypeIP6Addr)}
}

// setFor is the set holding p's family.
func (l layout) setFor(p netip.Prefix) *nftables.Set {
	if p.Addr().Is4() {
		return l.v4
	}
	return l.v6
}

// rebuild queues, in c's batch, the whole table from nothing: it creates the
// table if missing and deletes it (so one batch works whatever is there:
// nothing, imapgw's table, a hand-edited one), then creates it again with its
// sets, elements, chain and rules. The kernel applies the batch atomically:
// the old rules drop until the new ones do, and a refused batch changes
// nothing (no half-made table).
func (l layout) rebuild(c *nftables.Conn, ports []uint16, elems map[netip.Prefix]time.Time, now time.Time) error {
	c.AddTable(l.table)
	c.DelTable(l.table)
	c.AddTable(l.table)
	for _, s := range []*nftables.Set{l.v4, l.v6} {
		if err := c.AddSet(s, nil); err != nil {
			return err
		}
	}
	var v4, v6 []nftables.SetElement
	for p, until := range elems {
		e := elements(p, until.Sub(now))
		if p.Addr().Is4() {
			v4 = append(v4, e...)
		} else {
			v6 = append(v6, e...)
		}
	}
	if err := l.add(c, l.v4, v4); err != nil {
		return err
	}
	if err := l.add(c, l.v6, v6); err != nil {
		return err
	}
	ch := c.AddChain(&nftables.Chain{
		Name: chainName, Table: l.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityRef(chainPriority),
	})
	for _, port := range ports {
		c.AddRule(&nftables.Rule{Table: l.table, Chain: ch, Exprs: dropRule(unix.NFPROTO_IPV4, port, l.v4)})
		c.AddRule(&nftables.Rule{Table: l.table, Chain: ch, Exprs: dropRule(unix.NFPROTO_IPV6, port, l.v6)})
	}
	return nil
}

// add queues elements into s in chunks.
func (l layout) add(c *nftables.Conn, s *nftables.Set, elems []nftables.SetElement) error {
	return chunked(elems, func(e []nftables.SetElement) error { return c.SetAddElements(s, e) })
}

// chunked calls fn with perMessage elements at a time, keeping an interval's
// start and end in the same call.
func chunked(elems []nftables.SetElement, fn func([]nftables.SetElement) error) error {
	for len(elems) > 0 {
		n := min(len(elems), perMessage)
		if n < len(elems) && elems[n].IntervalEnd {
			n++
		}
		if err := fn(elems[:n]); err != nil {
			return err
		}
		elems = elems[n:]
	}
	return nil
}

// dropRule is `meta nfproto FAMILY meta l4proto tcp tcp dport PORT
// (ip|ip6) saddr @SET counter drop`.
func dropRule(family byte, port uint16, set *nftables.Set) []expr.Any {
	off, n := uint32(12), uint32(4) // IPv4 source address
	if family == unix.NFPROTO_IPV6 {
		off, n = 8, 16
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{family}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// elements encodes prefix p as an interval set's elements: its first address,
// and the address after its last flagged as the interval's end (none when p
// reaches the top of the address space: the interval then runs to the end).
// The start carries the timeout (the kernel refuses one on an interval's end
// and lets the interval go with its start). timeout is
// rounded up to whole milliseconds, the kernel's unit, and is at least 1 ms.
func elements(p netip.Prefix, timeout time.Duration) []nftables.SetElement {
	p = p.Masked()
	timeout = max((timeout + time.Millisecond - 1).Truncate(time.Millisecond), time.Millisecond)
	out := []nftables.SetElement{{Key: p.Addr().AsSlice(), Timeout: timeout}}
	if end, ok := after(p); ok {
		out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
	}
	return out
}

// after returns the first address past p, or false when p ends the space.
func after(p netip.Prefix) (netip.Addr, bool) {
	b := p.Addr().AsSlice()
	host := len(b)*8 - p.Bits()
	// Set the host bits to ones: the last address of p.
	for i := len(b) - 1; i >= 0 && host > 0; i-- {
		k := min(host, 8)
		b[i] |= byte(1<<k - 1)
		host -= k
	}
	last, _ := netip.AddrFromSlice(b)
	next := last.Next()
	return next, next.IsValid()
}

// uniquePorts sorts ports and drops repeats and zeros.
func uniquePorts(ports []uint16) []uint16 {
	out := slices.DeleteFunc(slices.Clone(ports), func(p uint16) bool { return p == 0 })
	slices.Sort(out)
	return slices.Compact(out)
}
