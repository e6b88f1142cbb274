package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/gcfloor"
	"github.com/imapgw/imapgw/internal/timerslack"
)

// runCmd is the daemon: SIGHUP reloads, SIGTERM and SIGINT drain and stop.
func runCmd(args []string, stderr io.Writer) int {
	fs := newFlagSet("run", stderr)
	path := configFlag(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// First, before anything is opened or started: it executes the program
	// again when the timer slack is the kernel's default (internal/timerslack).
	slackErr := timerslack.Raise()
	cfg, err := conf.Load(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	// Signals are caught before anything listens: a SIGHUP sent as soon as
	// the gateway answers would otherwise kill it, and a SIGTERM skip the drain.
	sigs := notifySignals()
	defer signal.Stop(sigs)
	notify, err := newNotifier()
	if err != nil {
		fmt.Fprintln(stderr, "imapgw:", err)
		return 1
	}
	defer notify.close()
	// A small heap would be collected many times a second under a stream of
	// handshakes (internal/gcfloor); GOGC in the environment still rules.
	defer gcfloor.Start(gcfloor.DefaultFloor)()
	done := make(chan struct{})
	defer close(done)
	go notify.pingWatchdog(done)
	logs := newLogWriter(stderr)
	defer logs.Close()
	g, err := startGateway(cfg, *path, logs)
	if err != nil {
		logs.Close() // the gateway's own lines first
		fmt.Fprintln(stderr, "imapgw:", err)
		return 1
	}
	if slackErr != nil {
		g.log.Info("timer slack left at the kernel's default", "err", slackErr)
	}
	g.notify.Store(notify)
	go g.notifyReady(done)
	// Libraries that log through the standard log package (certmagic's panic
	// recovery) then reach our handler too.
	slog.SetDefault(g.log)
	return g.serveUntil(sigs, nil)
}

// notifySignals starts catching the signals serveUntil handles.
func notifySignals() chan os.Signal {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	return sigs
}

// serveUntil blocks until SIGTERM or SIGINT arrives on sigs or stop is closed
// (tests), reloading on SIGHUP, then drains and stops the gateway.
func (g *gateway) serveUntil(sigs <-chan os.Signal, stop <-chan struct{}) int {
	for running := true; running; {
		select {
		case sig := <-sigs:
			g.log.Info("signal received", "signal", sig.String())
			if sig == syscall.SIGHUP {
				g.reloadNotified() // logs its outcome
				continue
			}
			running = false
		case <-stop:
			running = false
		}
	}
	g.shutdown()
	return 0
}
