package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imapgw/imapgw/acme"
	"github.com/imapgw/imapgw/admin"
	"github.com/imapgw/imapgw/backend"
	"github.com/imapgw/imapgw/cluster"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/firewall"
	"github.com/imapgw/imapgw/limiter"
	"github.com/imapgw/imapgw/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// gateway is the whole running process: the parts and the wiring between them.
type gateway struct {
	path  string // the config file, re-read on reload ("" for the demo)
	level *slog.LevelVar
	log   *slog.Logger
	reg   *prometheus.Registry
	lim   *limiter.Limiter
	certs *acme.Manager
	pool  *backend.Pool // the backend servers: health, routing, drain
	srv   *proxy.Server
	admin *admin.Server      // nil when admin.address is ""
	fw    *firewall.Firewall // nil unless bans.firewall = "nftables"
	cl    *cluster.Cluster   // nil unless [cluster] redis is set

	// notify is systemd's notify socket; nil when not under systemd (and in
	// the demo). Set after the admin endpoint, which reloads too, has started.
	notify atomic.Pointer[notifier]

	mu  sync.Mutex // serializes reloads
	cfg *conf.Config

	// draining is set at the start of shutdown: /readyz answers 503 from then on.
	draining atomic.Bool

	ctx    context.Context
	cancel context.CancelFunc
	bg     sync.WaitGroup // background loops: ban saving, certificates, health checks
}

// acmeTestOptions, when set, adjusts the certificate manager's options.
// Only the tests set it, in a child process they run as `imapgw run`
// (cluster_fleet_test.go): short-lived certificates from Pebble and quick
// renewal checks, so that a renewal across real processes fits in a test.
// Production never sets it.
var acmeTestOptions func(*acme.Options)

// newLogger builds the process logger; its level can change on reload.
func newLogger(c conf.Log, w io.Writer) (*slog.Logger, *slog.LevelVar) {
	level := new(slog.LevelVar)
	level.Set(parseLevel(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), level
	}
	return slog.New(slog.NewTextHandler(w, opts)), level
}

func parseLevel(s string) slog.Level {
	var l slog.Level
	l.UnmarshalText([]byte(s)) // validated by conf
	return l
}

// startGateway builds every part from cfg and opens the listeners.
func startGateway(cfg *conf.Config, path string, logOut io.Writer) (*gateway, error) {
	log, level := newLogger(cfg.Log, logOut)
	g := &gateway{path: path, cfg: cfg, log: log, level: level, reg: prometheus.NewRegistry()}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := g.start(); err != nil {
		g.cancel()
		return nil, err
	}
	return g, nil
}

func (g *gateway) start() error {
	cfg := g.cfg
	if cfg.Server.StateDir != "" {
		if err := os.MkdirAll(cfg.Server.StateDir, 0o700); err != nil {
			return fmt.Errorf("server.state_dir: %w", err)
		}
	}
	var err error
	g.lim, err = limiter.New(cfg.Bans, cfg.Limits, limiter.Options{StateDir: cfg.Server.StateDir, Logger: g.log, Registerer: g.reg})
	if err != nil {
		return err
	}
	if err := g.startCluster(); err != nil {
		return err
	}
	// The challenge listeners face the Internet like the IMAP ones: the same
	// admission (bans, connection rate, per-source concurrency) at accept.
	ao := acme.Options{Logger: g.log, Registerer: g.reg, Admit: g.lim.Admit}
	bo := backend.Options{Logger: g.log.With("part", "backend"), Registerer: g.reg}
	if g.cl != nil {
		// A fleet shares its certificates (one node orders and renews, the
		// others load) and its users' pins (every node sends a user to the
		// same server).
		ao.Storage, bo.Affinity = clusterStores(g.cl.Client(), g.cl.Prefix(), g.cl.Node(), g.log)
		bo.AffinityTimeout = g.cl.Timeout()
	}
	if acmeTestOptions != nil {
		acmeTestOptions(&ao)
	}
	g.certs, err = acme.New(cfg, ao)
	if err != nil {
		return err
	}
	if err := g.certs.Start(g.ctx); err != nil {
		return err
	}
	g.pool, err = backend.New(cfg.Backend, bo)
	if err != nil {
		return err
	}
	// The gateway owns the pool: it runs its checks and reloads it; proxy
	// only routes through it.
	g.srv, err = proxy.New(cfg, proxy.Options{Policy: g.lim, Certs: g.certs, Backends: g.pool, Logger: g.log, Registerer: g.reg})
	if err != nil {
		return err
	}
	if err := g.srv.Start(); err != nil {
		return err
	}
	if g.fw, err = g.startFirewall(); err != nil {
		g.srv.Shutdown(context.Background())
		return err
	}
	if g.admin, err = g.startAdmin(); err != nil {
		g.srv.Shutdown(context.Background())
		return err
	}
	g.bg.Add(2)
	go func() { defer g.bg.Done(); g.lim.Run(g.ctx) }()
	// Health checks run for the process's lifetime: the drain at shutdown
	// still routes by them; g.cancel ends them after it.
	go func() { defer g.bg.Done(); g.pool.Run(g.ctx) }()
	return nil
}

// reload reads the config file again and applies it; an invalid file leaves
// the running configuration in force and the error is returned.
func (g *gateway) reload() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.path == "" {
		return fmt.Errorf("no config file to reload")
	}
	cfg, err := conf.Load(g.path)
	if err != nil {
		g.log.Error("reload rejected: the running configuration stays", "err", err)
		return err
	}
	if err := cmp.Or(firewallReload(g.cfg.Bans, cfg.Bans), clusterReload(g.cfg.Cluster, cfg.Cluster)); err != nil {
		g.log.Error("reload rejected: the running configuration stays", "err", err)
		return err
	}
	if err := g.reloadCertFiles(cfg); err != nil {
		g.log.Error("reload rejected: certificate files; the running configuration and certificate stay", "err", err)
		return err
	}
	if err := g.certs.Update(cfg); err != nil {
		g.log.Error("reload rejected: certificates", "err", err)
		return err
	}
	// Before the listeners: a server list the pool refuses (an unreadable
	// CA file, a map file) rejects the reload while nothing else has changed
	// but the certificates, which the same file asked for anyway.
	if err := g.pool.Reload(cfg.Backend); err != nil {
		g.log.Error("reload rejected: backend servers", "err", err)
		return err
	}
	if err := g.srv.Update(cfg); err != nil {
		g.log.Error("reload rejected: listeners", "err", err)
		return err
	}
	g.lim.Update(cfg.Bans, cfg.Limits)
	if g.fw != nil {
		g.fw.SetPorts(listenPorts(g.srv.Addrs()))
	}
	g.level.Set(parseLevel(cfg.Log.Level))
	g.cfg = cfg
	g.log.Info("configuration reloaded", "file", g.path)
	return nil
}

// reloadNotified is reload between systemd's RELOADING=1 and READY=1: for
// SIGHUP and the admin API's reload alike.
func (g *gateway) reloadNotified() error { return g.notify.Load().reload(g.reload) }

// reloadCertFiles re-reads the certificate files when cfg keeps their paths
// (a reload after a renewal in place); certs.Update loads new paths itself.
// Either way a broken pair rejects the whole reload, before anything is
// applied, so the operator's reload answers with the reason instead of
// "reloaded" (issue 10).
func (g *gateway) reloadCertFiles(cfg *conf.Config) error {
	old, nw := g.cfg.TLS, cfg.TLS
	if old.Certificate != conf.CertFiles || nw.Certificate != conf.CertFiles ||
		old.CertFile != nw.CertFile || old.KeyFile != nw.KeyFile {
		return nil
	}
	return g.certs.Reload()
}

// shutdown drains sessions, then stops the background loops (which save state).
func (g *gateway) shutdown() {
	// Not ready before the listeners close (issue 10): a load balancer stops
	// sending new clients to a node that is leaving, while its sessions drain.
	g.draining.Store(true)
	g.notify.Load().setStopping("draining sessions")
	g.log.Info("shutting down: not ready: draining", "drain_timeout", g.cfg.Server.DrainTimeout.Duration)
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.Server.DrainTimeout.Duration+10*time.Second)
	defer cancel()
	g.srv.Shutdown(ctx)
	if g.admin != nil {
		g.admin.Shutdown(ctx) // after the drain: /metrics stays up while sessions end
	}
	g.cancel()
	g.bg.Wait()
	<-g.certs.Done()
	g.log.Info("stopped")
}
