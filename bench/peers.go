package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// peer is one proxy under test, started fresh for each round so that no round
// inherits another's heap.
type peer interface {
	name() string
	start() error
	addr() string // the TLS listener, host:port
	pid() int     // the root of its process tree
	stop() error
	version() string
}

// env is what every peer is configured with.
type env struct {
	dir      string // scratch directory
	cert     certFiles
	backend  string // the backend's host:port
	maxConns int    // client sessions a proxy must be able to hold at once
	fdLimit  int    // RLIMIT_NOFILE the proxies inherit
}

// Peer names, as the report shows them.
const (
	nameImapgw  = "imapgw"
	nameHAProxy = "HAProxy"
	nameNginx   = "nginx"
)

// nginxMailModule is where Debian's libnginx-mod-mail puts the module.
const nginxMailModule = "/usr/lib/nginx/modules/ngx_mail_module.so"

// lookBin finds a binary in PATH or the sbin directories a non-root PATH lacks.
func lookBin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin"} {
		if p := filepath.Join(dir, name); isExec(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: run scripts/bench-deps.sh (as root it installs haproxy nginx-light libnginx-mod-mail)", name)
}

func isExec(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// firstLine runs a version command and keeps the first line of its output.
func firstLine(bin string, args ...string) string {
	out, _ := exec.Command(bin, args...).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// listenPeer holds what the three peers share: a port, a process, a directory.
type listenPeer struct {
	env  *env
	bin  string
	port int
	p    *proc
	dir  string
}

func (l *listenPeer) addr() string { return fmt.Sprintf("127.0.0.1:%d", l.port) }
func (l *listenPeer) pid() int     { return l.p.pid() }

// prepare makes a fresh directory and picks a port for one start.
func (l *listenPeer) prepare(name string) error {
	l.dir = filepath.Join(l.env.dir, name)
	if err := os.RemoveAll(l.dir); err != nil {
		return err
	}
	// 0755: nginx workers and any unprivileged helper must traverse it.
	if err := os.MkdirAll(l.dir, 0o755); err != nil {
		return err
	}
	port, err := freePort()
	l.port = port
	return err
}

func (l *listenPeer) run(args ...string) error {
	p, err := startProc(filepath.Join(l.dir, "output.log"), l.bin, args...)
	if err != nil {
		return err
	}
	l.p = p
	if err := p.waitPort(l.addr(), 10*time.Second); err != nil {
		p.stop(syscall.SIGKILL)
		return err
	}
	return nil
}

// imapgwPeer is the gateway, built from this repository.
type imapgwPeer struct {
	listenPeer
	firewall string   // when set, bans.firewall = "nftables" with this table (kerneldrop.go)
	tag      string   // appended to the scratch directory's name, so two instances can run at once
	pool     []string // when set, these servers in the [[backend.server]] long form, route = "user" (pool.go)
	label    string   // when set, the name in logs and results: a second build compared with the first (-peers imapgw=PATH)
}

func (g *imapgwPeer) name() string {
	if g.label != "" {
		return g.label
	}
	return nameImapgw
}

func (g *imapgwPeer) version() string { return firstLine(g.bin, "version") }

func (g *imapgwPeer) start() error {
	if err := g.prepare("imapgw" + g.tag); err != nil {
		return err
	}
	cfg := filepath.Join(g.dir, "imapgw.toml")
	text := imapgwConfig(g.env, g.dir, g.port)
	if g.pool != nil {
		text = strings.Replace(text, fmt.Sprintf("servers = [%q]\nclient_ip = \"id\"\n", g.env.backend), poolConfig(g.pool), 1)
	}
	if g.firewall != "" {
		text = strings.Replace(text, "[bans]\n", fmt.Sprintf("[bans]\nfirewall = \"nftables\"\nfirewall_table = %q\nfirewall_cleanup = true\n", g.firewall), 1)
	}
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		return err
	}
	if out, err := exec.Command(g.bin, "check", "-config", cfg).CombinedOutput(); err != nil {
		return fmt.Errorf("imapgw check -config %s: %v: %s", cfg, err, out)
	}
	return g.run("run", "-config", cfg)
}

func (g *imapgwPeer) stop() error { return g.p.stop(syscall.SIGTERM) }

// imapgwConfig: legitimate load comes from several loopback addresses that are
// NOT in bans.allow, so the policy does its full work on every connection; the
// limits are raised so that it never refuses them. bans.source_failures counts
// failed and pending logins, so it stays above the 8 logins in flight per source
// of 64 clients; the flood test's source fails that many logins and is banned,
// with no delay. The log level is the default (info): one auth line and one
// session line per login, written to a file, as an operator runs it.
func imapgwConfig(e *env, dir string, port int) string {
	return fmt.Sprintf(`# Written by the benchmark (bench/peers.go).
[server]
hostname = %q
state_dir = %q
drain_timeout = "1s"

[[listen]]
address = "127.0.0.1:%d"
tls = "implicit"

[tls]
certificate = "files"
cert_file = %q
key_file = %q

[backend]
servers = [%q]
client_ip = "id"

[limits]
max_connections = %d
max_connections_per_source = %d
connection_rate = 1000000.0

[bans]
allow = []
source_failures = %d
failure_delay = "0s"

[admin]
address = ""
`, benchHost, filepath.Join(dir, "state"), port, e.cert.cert, e.cert.key, e.backend, e.maxConns, e.maxConns, sourceFailures)
}

// haproxyPeer is HAProxy in TCP mode terminating TLS.
type haproxyPeer struct{ listenPeer }

func (h *haproxyPeer) name() string    { return nameHAProxy }
func (h *haproxyPeer) version() string { return firstLine(h.bin, "-v") }

func (h *haproxyPeer) start() error {
	if err := h.prepare("haproxy"); err != nil {
		return err
	}
	cfg := filepath.Join(h.dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(haproxyConfig(h.env, h.port)), 0o644); err != nil {
		return err
	}
	if out, err := exec.Command(h.bin, "-c", "-f", cfg).CombinedOutput(); err != nil {
		return fmt.Errorf("haproxy -c -f %s: %v: %s", cfg, err, out)
	}
	return h.run("-f", cfg, "-db")
}

// stop: SIGTERM is HAProxy's hard stop (SIGUSR1 would wait for every session).
func (h *haproxyPeer) stop() error { return h.p.stop(syscall.SIGTERM) }

// haproxyConfig: defaults except what the bench needs. maxconn counts client
// sessions; HAProxy derives its fd need (about twice that) and checks it
// against RLIMIT_NOFILE at start. nbthread 2: one thread per core of the
// bench machine, as an operator would run it. The TLS 1.3 suites are
// listed with AES-128-GCM first, because HAProxy picks by its own order and
// OpenSSL's puts AES-256 first; the other two pick AES-128-GCM from the client's
// order, and the same cipher for all is the point.
func haproxyConfig(e *env, port int) string {
	return fmt.Sprintf(`# Written by the benchmark (bench/peers.go).
global
	maxconn %d
	nbthread 2
	ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256

defaults
	mode tcp
	timeout connect 5s
	timeout client 1h
	timeout server 1h

frontend imaps
	bind 127.0.0.1:%d ssl crt %s
	default_backend imap

backend imap
	server s1 %s
`, e.maxConns, port, e.cert.combined, e.backend)
}

// nginxPeer is nginx's mail proxy, with its auth_http answered by an http
// server block of the same nginx.
type nginxPeer struct {
	listenPeer
	authPort int
}

func (n *nginxPeer) name() string    { return nameNginx }
func (n *nginxPeer) version() string { return firstLine(n.bin, "-v") }

func (n *nginxPeer) start() error {
	if err := n.prepare("nginx"); err != nil {
		return err
	}
	var err error
	if n.authPort, err = freePort(); err != nil {
		return err
	}
	cfg := filepath.Join(n.dir, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(nginxConfig(n.env, n.dir, n.port, n.authPort)), 0o644); err != nil {
		return err
	}
	args := []string{"-p", n.dir, "-c", cfg, "-e", filepath.Join(n.dir, "error.log"), "-g", "daemon off;"}
	if out, err := exec.Command(n.bin, append([]string{"-t", "-q"}, args...)...).CombinedOutput(); err != nil {
		return fmt.Errorf("nginx -t -c %s: %v: %s", cfg, err, out)
	}
	return n.run(args...)
}

// stop: SIGTERM is nginx's fast shutdown; the master waits for its workers.
func (n *nginxPeer) stop() error { return n.p.stop(syscall.SIGTERM) }

// nginxConfig: defaults except what the bench needs; runs as root so that the
// workers read the key in the scratch directory. ssl_protocols: nginx 1.22's
// default lacks TLS 1.3 (added in 1.23.4). worker_connections counts both
// sides of a session; any worker may get all of them.
func nginxConfig(e *env, dir string, port, authPort int) string {
	return fmt.Sprintf(`# Written by the benchmark (bench/peers.go).
load_module %s;
user root;
worker_processes auto;
worker_rlimit_nofile %d;
pid %s;
error_log %s error;

events {
	worker_connections %d;
}

http {
	access_log off;
	server {
		listen 127.0.0.1:%d;
		location = /auth {
			add_header Auth-Status OK;
			add_header Auth-Server 127.0.0.1;
			add_header Auth-Port %s;
			return 204;
		}
	}
}

mail {
	server_name %s;
	auth_http 127.0.0.1:%d/auth;
	ssl_certificate %s;
	ssl_certificate_key %s;
	ssl_protocols TLSv1.2 TLSv1.3;
	server {
		listen 127.0.0.1:%d ssl;
		protocol imap;
	}
}
`, nginxMailModule, e.fdLimit, filepath.Join(dir, "nginx.pid"), filepath.Join(dir, "error.log"),
		min(2*e.maxConns, e.fdLimit-64), authPort, portOf(e.backend), benchHost, authPort, e.cert.cert, e.cert.key, port)
}

func portOf(hostport string) string {
	_, port, _ := net.SplitHostPort(hostport)
	return port
}
