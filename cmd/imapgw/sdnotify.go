package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// notifier speaks systemd's notify protocol (sd_notify(3)) for Type=notify
// units: one datagram of KEY=VALUE lines per state change, sent to the
// unixgram socket named by $NOTIFY_SOCKET ("@name" is an abstract socket,
// which package net maps itself). Written out rather than imported: it is a
// dozen lines. A nil *notifier (not under systemd) ignores every call.
type notifier struct {
	conn     *net.UnixConn
	watchdog time.Duration // WatchdogSec/2 when systemd watches this process, else 0

	// mu orders the state changes: no READY=1 after STOPPING=1, and no
	// RELOADING=1 before the first READY=1 (systemd is still starting us).
	mu       sync.Mutex
	ready    bool
	stopping bool
}

// newNotifier reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID; it returns
// nil when the first is unset.
func newNotifier() (*notifier, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil, nil
	}
	if !strings.HasPrefix(path, "/") && !strings.HasPrefix(path, "@") {
		return nil, fmt.Errorf("NOTIFY_SOCKET %q: not a unix socket path", path)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("NOTIFY_SOCKET: %w", err)
	}
	n := &notifier{conn: conn}
	n.watchdog = watchdogInterval(os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID"), os.Getpid())
	return n, nil
}

// watchdogInterval is how often to send WATCHDOG=1: half of WATCHDOG_USEC, as
// sd_watchdog_enabled(3) advises, and only when WATCHDOG_PID is unset or
// names this process (the variables may be inherited by a child).
func watchdogInterval(usec, pid string, self int) time.Duration {
	if pid != "" && pid != strconv.Itoa(self) {
		return 0
	}
	n, err := strconv.ParseUint(usec, 10, 63)
	if err != nil || n == 0 {
		return 0
	}
	return time.Duration(n) * time.Microsecond / 2
}

// send writes one notification; systemd reads each datagram whole.
func (n *notifier) send(lines ...string) error {
	if n == nil {
		return nil
	}
	_, err := n.conn.Write([]byte(strings.Join(lines, "\n") + "\n"))
	return err
}

// setReady sends READY=1 with a status line, unless shutdown has begun.
func (n *notifier) setReady(status string) {
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopping {
		return
	}
	n.ready = true
	n.send("READY=1", "STATUS="+status)
}

// reload runs do between RELOADING=1 and READY=1 (with the outcome as
// STATUS). systemd ≥ 253 (Type=notify-reload) wants MONOTONIC_USEC with
// RELOADING=1, to tell this reload from an older one.
func (n *notifier) reload(do func() error) error {
	if n == nil {
		return do()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.ready || n.stopping {
		return do()
	}
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	n.send("RELOADING=1", "MONOTONIC_USEC="+strconv.FormatInt(ts.Nano()/1000, 10), "STATUS=reloading the configuration")
	err := do()
	status := "configuration reloaded"
	if err != nil {
		// One line: a newline would start another KEY=VALUE assignment.
		status = "reload rejected, the running configuration stays: " + strings.ReplaceAll(err.Error(), "\n", "; ")
	}
	n.send("READY=1", "STATUS="+status)
	return err
}

// setStopping sends STOPPING=1: the drain has begun.
func (n *notifier) setStopping(status string) {
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stopping = true
	n.send("STOPPING=1", "STATUS="+status)
}

// pingWatchdog sends WATCHDOG=1 every interval until stop is closed.
func (n *notifier) pingWatchdog(stop <-chan struct{}) {
	if n == nil || n.watchdog <= 0 {
		return
	}
	t := time.NewTicker(n.watchdog)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			n.send("WATCHDOG=1")
		case <-stop:
			return
		}
	}
}

func (n *notifier) close() {
	if n != nil {
		n.conn.Close()
	}
}

// notifyReady sends READY=1 once a certificate is loaded (the listeners are
// up when startGateway returns): with ACME the first certificate may come
// minutes later, and systemd must not call the gateway started before then.
func (g *gateway) notifyReady(stop <-chan struct{}) {
	n := g.notify.Load()
	if n == nil {
		return
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for !g.certs.Ready() {
		select {
		case <-t.C:
		case <-stop:
			return
		}
	}
	n.setReady(fmt.Sprintf("serving on %s", strings.Join(addrStrings(g.srv.Addrs()), ", ")))
}

func addrStrings(addrs []net.Addr) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	return out
}
