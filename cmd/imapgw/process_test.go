package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imapgw/imapgw/internal/testbed"
)

// asMain is set in the environment of a child started by startProcess: the
// test binary then runs main instead of the tests, so the child is the real
// `imapgw run` — its flags, signal handling and exit code — built with the
// test's flags (-race included).
const asMain = "IMAPGW_TEST_AS_MAIN"

// asMainNofile, with asMain, runs the child under that RLIMIT_NOFILE (soft and
// hard), as `prlimit --nofile=N:N imapgw ...` would.
const asMainNofile = "IMAPGW_TEST_NOFILE"

func TestMain(m *testing.M) {
	if os.Getenv(asMain) == "1" {
		if n, err := strconv.ParseUint(os.Getenv(asMainNofile), 10, 64); err == nil {
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n}); err != nil {
				fmt.Fprintln(os.Stderr, "setrlimit:", err)
				os.Exit(3)
			}
		}
		main()
		return
	}
	os.Exit(m.Run())
}

// process is an `imapgw run` child process.
type process struct {
	cmd   *exec.Cmd
	logs  *testbed.LogBuffer // its stderr: the slog text lines
	exit  chan struct{}      // closed when it has exited; then err is set
	err   error
	imaps string // the first listener's address, from its "listening" line
	admin string // the admin endpoint's address
}

// startProcess runs `imapgw run -config path` and waits until it logs its
// listeners and admin endpoint and /readyz answers 200. The process is
// killed at the test's end if it still runs, and its log shown on failure.
func startProcess(t *testing.T, path string) *process {
	t.Helper()
	p := launchProcess(t, path)
	p.waitStarted(t)
	return p
}

// launchProcess runs `imapgw run -config path` with env added to the
// environment, without waiting for anything.
func launchProcess(t *testing.T, path string, env ...string) *process {
	t.Helper()
	p := &process{logs: &testbed.LogBuffer{}, exit: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], "run", "-config", path)
	p.cmd.Env = append(append(os.Environ(), asMain+"=1"), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	// The child dies with the test binary, whatever happens to it.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exit) }()
	t.Cleanup(func() {
		if !p.exited() {
			p.cmd.Process.Kill()
			<-p.exit
		}
		if t.Failed() {
			t.Logf("imapgw run log:\n%s", p.logs.String())
		}
	})
	return p
}

// waitStarted waits until the process logs its listeners and admin endpoint
// and /readyz answers 200.
func (p *process) waitStarted(t *testing.T) {
	t.Helper()
	p.imaps = p.logValue(t, `msg=listening address=(\S+)`)
	p.admin = p.logValue(t, `msg="admin endpoint listening" .*?address=(\S+)`)
	p.eventually(t, "/readyz to answer 200", func() bool {
		code, _, err := p.get("/readyz")
		return err == nil && code == 200
	})
}

func (p *process) exited() bool {
	select {
	case <-p.exit:
		return true
	default:
		return false
	}
}

// signal sends sig to the process.
func (p *process) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("sending %v: %v", sig, err)
	}
}

// logValue waits for a log line matching re and returns its first group.
func (p *process) logValue(t *testing.T, re string) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	var m []string
	p.eventually(t, "a log line matching "+re, func() bool {
		m = rx.FindStringSubmatch(p.logs.String())
		return m != nil
	})
	return m[1]
}

// waitLog waits until the log holds n lines containing s.
func (p *process) waitLog(t *testing.T, s string, n int) {
	t.Helper()
	p.eventually(t, fmt.Sprintf("%d log lines with %q", n, s), func() bool {
		return strings.Count(p.logs.String(), s) >= n
	})
}

// eventually polls cond for up to 10 s; the process exiting first fails
// the test at once.
func (p *process) eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if p.exited() {
			t.Fatalf("imapgw run exited (%v) while waiting for %s", p.err, what)
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wait waits up to d for the process to exit and returns its exit code.
func (p *process) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.exit:
	case <-time.After(d):
		t.Fatalf("imapgw run still running %v later", d)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatalf("imapgw run: %v", p.err)
	}
	return 0
}

// adminClient does not reuse connections: each probe is a new connection,
// as a load balancer's health check is.
var adminClient = &http.Client{
	Timeout:   5 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// get calls the admin endpoint (no token: it listens on loopback).
func (p *process) get(path string) (int, string, error) {
	return p.do("GET", path, "")
}

// do sends one request to the admin endpoint and returns status and body.
func (p *process) do(method, path, body string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+p.admin+path, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	if method != "GET" {
		// State-changing requests must be JSON (issue 11.5), body or not.
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// mustDo is do that fails the test on a transport error.
func (p *process) mustDo(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	code, b, err := p.do(method, path, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return code, b
}

// procConfig is the part of a test config file that varies.
type procConfig struct {
	backend string // the demo backend's address
	state   string // server.state_dir
	drain   string // server.drain_timeout
	tls     string // the [tls] section's lines
	bans    string // more [bans] lines
	level   string // log.level
}

// write writes c as a config file at path: one implicit-TLS listener and the
// admin endpoint, both on free loopback ports, no token.
func (c procConfig) write(t *testing.T, path string) {
	t.Helper()
	if c.tls == "" {
		c.tls = "certificate = \"self-signed\"\nnames = [\"127.0.0.1\"]"
	}
	if c.level == "" {
		c.level = "info"
	}
	text := fmt.Sprintf(`[server]
hostname = "localhost"
state_dir = %q
drain_timeout = %q

[[listen]]
address = "127.0.0.1:0"
tls = "implicit"

[tls]
%s

[backend]
servers = [%q]
client_ip = "none"

[bans]
allow = ["::1/128"]
failure_delay = "0s"
%s

[admin]
address = "127.0.0.1:0"

[log]
level = %q
`, c.state, c.drain, c.tls, c.backend, c.bans, c.level)
	must(t, os.WriteFile(path, []byte(text), 0o600))
}

// imapSession is a logged-in IMAP session over TLS, driven line by line.
type imapSession struct {
	conn *tls.Conn
	br   *bufio.Reader
	tags int
}

// openSession connects to addr with cfg (nil: any certificate) and logs in
// as demo.
func openSession(addr string, cfg *tls.Config) (*imapSession, error) {
	if cfg == nil {
		cfg = &tls.Config{InsecureSkipVerify: true}
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	s := &imapSession{conn: c, br: bufio.NewReader(c)}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := readUntil(s.br, "* OK"); err != nil {
		c.Close()
		return nil, err
	}
	if err := s.cmd("LOGIN demo demo"); err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

// cmd sends one command and waits for its tagged OK.
func (s *imapSession) cmd(line string) error {
	s.tags++
	tag := fmt.Sprintf("t%d", s.tags)
	s.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(s.conn, "%s %s\r\n", tag, line); err != nil {
		return err
	}
	return readUntil(s.br, tag+" OK")
}

// logout ends the session politely. (readUntil lets a BYE pass before the
// tag "c" only.)
func (s *imapSession) logout() error {
	defer s.conn.Close()
	s.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(s.conn, "c LOGOUT\r\n"); err != nil {
		return err
	}
	return readUntil(s.br, "c OK")
}

// presented does a TLS handshake with addr, verifying against roots for the
// name localhost, and returns the leaf certificate it was shown.
func presented(addr string, roots *x509.CertPool) (*x509.Certificate, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{RootCAs: roots, ServerName: "localhost"})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}
