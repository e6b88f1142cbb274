package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/imapgw/imapgw/limiter"
)

// Options configure a Firewall. Table and Ports are required.
type Options struct {
	Table      string                // bans.firewall_table
	Ports      []uint16              // the gateway's listening TCP ports, as bound
	Cleanup    bool                  // bans.firewall_cleanup: Close removes the table
	Logger     *slog.Logger          // default slog.Default()
	Registerer prometheus.Registerer // nil: metrics counted, not registered
	Now        func() time.Time      // default time.Now
	// RetryEvery is the wait before a failed change is tried again (default 5s).
	RetryEvery time.Duration
}

// Firewall keeps the kernel's sets equal to the bans it is told of. The
// limiter calls BanSet and BanLifted under its lock: they only record the
// change and wake Run, which applies what changed in one netlink batch.
type Firewall struct {
	o      Options
	log    *slog.Logger
	now    func() time.Time
	m      *metrics
	wake   chan struct{}
	layout layout

	mu    sync.Mutex
	ports []uint16                   // the listening ports the chain protects
	want  map[netip.Prefix]time.Time // the bans: prefix → until
	dirty map[netip.Prefix]bool      // changed since the last batch
	have  map[netip.Prefix]time.Time // what the last successful batch left in the kernel
	stale bool                       // a batch failed: rebuild the table from want
}

var _ limiter.BanListener = (*Firewall)(nil)

// ErrPermission is wrapped by Start's error when the process lacks CAP_NET_ADMIN.
var ErrPermission = errors.New("bans.firewall = \"nftables\" needs CAP_NET_ADMIN (run as root or grant the capability, e.g. systemd AmbientCapabilities=CAP_NET_ADMIN)")

// New builds a Firewall; Start installs the table.
func New(o Options) (*Firewall, error) {
	if o.Table == "" {
		return nil, errors.New("firewall: no table name")
	}
	ports := uniquePorts(o.Ports)
	if len(ports) == 0 {
		return nil, errors.New("firewall: no listening ports to protect")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.RetryEvery <= 0 {
		o.RetryEvery = 5 * time.Second
	}
	f := &Firewall{
		o: o, log: o.Logger, now: o.Now, ports: ports,
		wake:   make(chan struct{}, 1),
		layout: newLayout(o.Table),
		want:   make(map[netip.Prefix]time.Time),
		dirty:  make(map[netip.Prefix]bool),
		have:   make(map[netip.Prefix]time.Time),
	}
	m, err := newMetrics(f, o.Registerer)
	if err != nil {
		return nil, err
	}
	f.m = m
	return f, nil
}

// Start creates (or repairs) the table and makes its elements equal to bans,
// the live bans (limiter.SetBanListener's answer), in one atomic batch.
// Changes heard before Start are applied after it, by Run. Without
// CAP_NET_ADMIN the error wraps ErrPermission and the kernel is unchanged.
func (f *Firewall) Start(bans []limiter.Ban) error {
	now := f.now()
	f.mu.Lock()
	for _, b := range bans {
		if _, queued := f.dirty[b.Prefix]; !queued && now.Before(b.Until) {
			f.want[b.Prefix] = b.Until
		}
	}
	f.mu.Unlock()
	start := time.Now()
	n, err := f.rebuild()
	if err != nil {
		return err
	}
	f.log.Info("firewall table installed", "table", "inet "+f.o.Table, "ports", f.Ports(),
		"elements", n, "took", time.Since(start).Round(time.Microsecond))
	return nil
}

// SetPorts changes the protected ports (listeners changed on reload); Run
// rebuilds the table with them.
func (f *Firewall) SetPorts(ports []uint16) {
	ports = uniquePorts(ports)
	f.mu.Lock()
	if !slices.Equal(ports, f.ports) && len(ports) > 0 {
		f.ports, f.stale = ports, true
	}
	f.mu.Unlock()
	f.poke()
}

// Ports returns the protected ports.
func (f *Firewall) Ports() []uint16 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ports)
}

// rebuild replaces the table with one holding want, and records it as had.
func (f *Firewall) rebuild() (int, error) {
	now := f.now()
	f.mu.Lock()
	f.pruneLocked(now)
	want, ports := maps.Clone(f.want), slices.Clone(f.ports)
	clear(f.dirty)
	f.mu.Unlock()
	c, err := f.conn()
	if err != nil {
		return 0, f.fail("opening netlink", err)
	}
	l := newLayout(f.o.Table)
	if err := l.rebuild(c, ports, want, now); err != nil {
		return 0, f.fail("building the table", err)
	}
	if err := c.Flush(); err != nil {
		f.mu.Lock()
		f.stale = true
		for p := range want {
			f.dirty[p] = true
		}
		f.mu.Unlock()
		return 0, f.fail("installing table inet "+f.o.Table, err)
	}
	f.mu.Lock()
	f.have, f.stale = want, false
	f.mu.Unlock()
	return len(want), nil
}

// fail counts err and names the capability when the kernel said EPERM.
func (f *Firewall) fail(what string, err error) error {
	f.m.errors.Inc()
	if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("firewall: %s: %w: %w", what, ErrPermission, err)
	}
	return fmt.Errorf("firewall: %s: %w", what, err)
}

// conn opens a netlink connection for one batch. Its send buffer is forced
// large: a batch must reach the kernel in one message to be one transaction,
// and 10,000 bans make about a megabyte.
func (f *Firewall) conn() (*nftables.Conn, error) {
	return nftables.New(nftables.WithSockOptions(bigSendBuffer))
}

func bigSendBuffer(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		// SO_SNDBUFFORCE needs CAP_NET_ADMIN, which the batch needs anyway:
		// without it keep the default and let the kernel say EPERM.
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 16<<20) != nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 16<<20)
		}
		// One acknowledgement per message comes back before Flush reads them.
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	})
	return errors.Join(err, serr)
}

// BanSet records that prefix is banned until until (limiter.BanListener).
func (f *Firewall) BanSet(prefix netip.Prefix, until time.Time) {
	f.mu.Lock()
	f.want[prefix] = until
	f.dirty[prefix] = true
	f.mu.Unlock()
	f.poke()
}

// BanLifted records that prefix's ban ended early (limiter.BanListener).
func (f *Firewall) BanLifted(prefix netip.Prefix) {
	f.mu.Lock()
	delete(f.want, prefix)
	f.dirty[prefix] = true
	f.mu.Unlock()
	f.poke()
}

func (f *Firewall) poke() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// InKernel reports whether the last successful batch left prefix's ban in
// the kernel and its timeout has not run out.
func (f *Firewall) InKernel(prefix netip.Prefix) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	until, ok := f.have[prefix]
	return ok && f.now().Before(until)
}

// Run applies recorded changes until ctx ends, then removes the table when
// bans.firewall_cleanup is set. A failed batch is counted, logged, and
// followed by a rebuild of the whole table, retried every RetryEvery.
func (f *Firewall) Run(ctx context.Context) {
	retry := time.NewTimer(0)
	<-retry.C
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			f.apply() // changes made during shutdown (a last lift) still count
			f.cleanup()
			return
		case <-f.wake:
		case <-retry.C:
		}
		if err := f.apply(); err != nil {
			f.log.Error("firewall: kernel not updated; bans stay enforced at accept, retrying",
				"table", "inet "+f.o.Table, "err", err, "retry_in", f.o.RetryEvery)
			retry.Reset(f.o.RetryEvery)
		}
	}
}

// apply sends what changed since the last batch. An update is a delete and an
// add in the same batch (the kernel keeps an element's first timeout on a
// plain add). After a failure it rebuilds the whole table instead.
func (f *Firewall) apply() error {
	now := f.now()
	f.mu.Lock()
	if f.stale {
		f.mu.Unlock()
		_, err := f.rebuild()
		if err == nil {
			f.log.Info("firewall table rebuilt after an error", "table", "inet "+f.o.Table)
		}
		return err
	}
	f.pruneLocked(now)
	var add, del []netip.Prefix
	for p := range f.dirty {
		w, wok := f.want[p]
		h, hok := f.have[p]
		if hok && (!wok || !w.Equal(h)) {
			del = append(del, p)
		}
		if wok && (!hok || !w.Equal(h)) {
			add = append(add, p)
		}
	}
	next := maps.Clone(f.want)
	clear(f.dirty)
	f.mu.Unlock()
	if len(add)+len(del) == 0 {
		return nil
	}
	if err := f.send(add, del, next, now); err != nil {
		f.mu.Lock()
		f.stale = true
		f.mu.Unlock()
		return err
	}
	f.mu.Lock()
	for _, p := range del {
		delete(f.have, p)
	}
	for _, p := range add {
		f.have[p] = next[p]
	}
	f.mu.Unlock()
	return nil
}

func (f *Firewall) send(add, del []netip.Prefix, until map[netip.Prefix]time.Time, now time.Time) error {
	c, err := f.conn()
	if err != nil {
		return f.fail("opening netlink", err)
	}
	l := f.layout
	// Deletes first, so that an update (both) ends with the new element; a
	// few messages per set, not one per ban, keep the kernel's answers few.
	var del4, del6, add4, add6 []nftables.SetElement
	for _, p := range del {
		e := elements(p, time.Millisecond)
		if p.Addr().Is4() {
			del4 = append(del4, e...)
		} else {
			del6 = append(del6, e...)
		}
	}
	for _, p := range add {
		e := elements(p, until[p].Sub(now))
		if p.Addr().Is4() {
			add4 = append(add4, e...)
		} else {
			add6 = append(add6, e...)
		}
	}
	for _, op := range []struct {
		s     *nftables.Set
		elems []nftables.SetElement
		fn    func(*nftables.Set, []nftables.SetElement) error
	}{
		{l.v4, del4, c.SetDeleteElements}, {l.v6, del6, c.SetDeleteElements},
		{l.v4, add4, c.SetAddElements}, {l.v6, add6, c.SetAddElements},
	} {
		if err := chunked(op.elems, func(e []nftables.SetElement) error { return op.fn(op.s, e) }); err != nil {
			return f.fail("queueing set elements", err)
		}
	}
	if err := c.Flush(); err != nil {
		return f.fail("updating table inet "+f.o.Table, err)
	}
	return nil
}

// pruneLocked forgets bans whose time is up: the kernel has dropped their
// elements itself. Callers hold mu.
func (f *Firewall) pruneLocked(now time.Time) {
	for p, until := range f.want {
		if !now.Before(until) {
			delete(f.want, p)
		}
	}
	for p, until := range f.have {
		if !now.Before(until) {
			delete(f.have, p)
			f.dirty[p] = true // a ban set again on p is an add, not an update
		}
	}
}

// elementsInKernel is the number of bans the kernel holds, as far as the
// last successful batch knows.
func (f *Firewall) elementsInKernel() float64 {
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, until := range f.have {
		if now.Before(until) {
			n++
		}
	}
	return float64(n)
}

// cleanup removes the table when bans.firewall_cleanup asks for it.
func (f *Firewall) cleanup() {
	if !f.o.Cleanup {
		return
	}
	if err := f.Remove(); err != nil {
		f.log.Error("firewall: table not removed on shutdown", "table", "inet "+f.o.Table, "err", err)
		return
	}
	f.log.Info("firewall table removed (bans.firewall_cleanup)", "table", "inet "+f.o.Table)
}

// Remove deletes the table (nothing when it is not there).
func (f *Firewall) Remove() error {
	c, err := f.conn()
	if err != nil {
		return f.fail("opening netlink", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: f.o.Table}
	c.AddTable(t) // so that the delete never fails on a missing table
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return f.fail("removing table inet "+f.o.Table, err)
	}
	f.mu.Lock()
	clear(f.have)
	f.mu.Unlock()
	return nil
}
