package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/imapgw/imapgw/conf"
)

// runCmd is the daemon: SIGHUP reloads, SIGTERM and SIGINT drain and stop.
func runCmd(args []string, stderr io.Writer) int {
	fs := newFlagSet("run", stderr)
	path := configFlag(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := conf.Load(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	g, err := startGateway(cfg, *path, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "imapgw:", err)
		return 1
	}
	// Libraries that log through the standard log package (certmagic's panic
	// recovery) then reach our handler too.
	slog.SetDefault(g.log)
	return g.serveSignals()
}

// serveSignals blocks until SIGTERM or SIGINT, reloading on SIGHUP.
func (g *gateway) serveSignals() int { return g.serveUntil(nil) }

// serveUntil is serveSignals that also stops when stop is closed (tests).
func (g *gateway) serveUntil(stop <-chan struct{}) int {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	for running := true; running; {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				g.reload()
				continue
			}
			g.log.Info("signal received", "signal", sig.String())
			running = false
		case <-stop:
			running = false
		}
	}
	g.shutdown()
	return 0
}
