package testbed

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

const (
	// startTimeout bounds the wait for Dovecot's listeners to greet.
	startTimeout = 20 * time.Second
	// stopTimeout is how long Dovecot gets to shut down after SIGTERM before its
	// whole process group is killed.
	stopTimeout = 10 * time.Second
	// startAttempts covers the race between picking a free port and Dovecot
	// binding it.
	startAttempts = 5
	// maxSocketPath is the room for a unix socket path (sun_path is 108 bytes with
	// its NUL); Dovecot's longest socket below base_dir adds about 30 bytes.
	maxSocketPath = 107 - 40
)

// DefaultUsers returns the accounts StartDovecot creates when DovecotOptions.Users
// is nil: plain ASCII, a password with spaces, a UTF-8 password, and demo/demo.
func DefaultUsers() map[string]string {
	return map[string]string{
		"alice": "alice-secret",
		"bob":   "bob secret with spaces",
		"carol": "pässwörd-ü",
		"demo":  "demo",
	}
}

// DovecotOptions configures StartDovecot. The zero value gives plain IMAP with the
// DefaultUsers and Dovecot's defaults for failed logins: operators run those, so
// tests do too (issue 10). AuthFailureDelay, NoAuthPenalty and NoDelayFrom depart
// from them and need a Why.
type DovecotOptions struct {
	// Users maps user names to passwords. Nil means DefaultUsers(). Names and
	// passwords must not contain ':' or line breaks (passwd-file format).
	Users map[string]string
	// TLS adds an implicit-TLS listener (Dovecot.TLSAddr) and offers STARTTLS on
	// Dovecot.Addr, with a certificate for "localhost" and "127.0.0.1".
	TLS bool
	// CA issues that certificate. Nil means a new CA, exposed as Dovecot.CA.
	CA *CA
	// AuthFailureDelay is how long Dovecot waits before answering a failed login,
	// rounded up to whole seconds N. Zero means Dovecot's default, 2s; negative
	// means none. Dovecot compares whole seconds on a 500 ms timer, so a failure
	// is answered between N-1 and N+0.5 s after it happened (under 1 s with none).
	AuthFailureDelay time.Duration
	// NoAuthPenalty turns Dovecot's auth penalty off for every client. With it on
	// (the default), after a failed login the next attempts from the same client
	// address (rip, the forwarded one behind the gateway) wait 4, 8, then 15 s
	// before they are even checked, trusted network or not.
	NoAuthPenalty bool
	// NoDelayFrom, a comma-separated list of networks, answers logins whose
	// connection comes from there (real_rip: the gateway's own address, whatever
	// client address it forwards) with neither auth_failure_delay nor the auth
	// penalty, through a passdb that sets "nodelay" — the setting README's
	// "Fronting Dovecot" gives for a Dovecot that also serves clients directly.
	NoDelayFrom string
	// OAuth adds Dovecot's oauth2 passdb for AUTHENTICATE XOAUTH2 and
	// OAUTHBEARER (auth_mechanisms = plain login xoauth2 oauthbearer), checking
	// tokens with this introspection endpoint (StartIntrospection).
	OAuth *Introspection
	// Why says why the test departs from Dovecot's defaults; StartDovecot fails a
	// test that sets one of the three fields above without it.
	Why string

	// shared is the directory holding mail/ and passwd when several instances
	// share them (StartDovecotCluster); empty means the instance's own Dir.
	shared string
}

// departs reports whether o changes Dovecot's defaults for failed logins.
func (o DovecotOptions) departs() bool {
	return o.AuthFailureDelay != 0 || o.NoAuthPenalty || o.NoDelayFrom != ""
}

// Dovecot is a running Dovecot (Debian dovecot-imapd), a child of the test with
// its own configuration, state and mail in a temporary directory.
type Dovecot struct {
	// Addr is the plain IMAP listener (host:port); it offers STARTTLS with TLS.
	Addr string
	// ProxyAddr is a plain IMAP listener where every connection must start with a
	// PROXY v1 or v2 header, believed from 127.0.0.0/8.
	ProxyAddr string
	// TLSAddr is the implicit-TLS listener; empty without DovecotOptions.TLS.
	TLSAddr string
	// CA issued the server certificate; nil without DovecotOptions.TLS.
	CA *CA
	// Users holds the accounts and their passwords.
	Users map[string]string
	// Dir holds the configuration (dovecot.conf), the log (dovecot.log), state and
	// mail. It is removed in t.Cleanup.
	Dir string

	t       testing.TB
	bin     string
	conf    dovecotConfData
	logFile string
	outFile string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited <-chan struct{} // closed when cmd has been waited for
}

// StartDovecot starts Dovecot and returns once all its listeners greet with "* OK".
// It is stopped and its directory removed in t.Cleanup. It skips or fails the test
// as Need does when Dovecot is not installed.
func StartDovecot(t testing.TB, o DovecotOptions) *Dovecot {
	t.Helper()
	Need(t, "dovecot")
	if o.departs() && strings.TrimSpace(o.Why) == "" {
		t.Fatalf("dovecot: AuthFailureDelay, NoAuthPenalty or NoDelayFrom set without DovecotOptions.Why: " +
			"operators run Dovecot's defaults, so a test that does not must say why")
	}
	d := &Dovecot{t: t, bin: Path("dovecot"), Users: o.Users}
	if d.Users == nil {
		d.Users = DefaultUsers()
	}
	d.Users = maps.Clone(d.Users)
	d.makeDir(t)
	// Cleanups run last-registered first: Dovecot stops before its directory goes.
	t.Cleanup(func() {
		d.Stop()
		if t.Failed() {
			t.Logf("dovecot log tail:\n%s", d.logTail())
		}
	})
	d.conf.setUsers(t)
	d.conf.FailureDelay = failureDelay(o.AuthFailureDelay)
	d.conf.NoPenalty = o.NoAuthPenalty
	d.conf.NoDelayFrom = o.NoDelayFrom
	if o.shared == "" {
		o.shared = d.Dir
		writeFile(t, filepath.Join(d.Dir, "passwd"), passwdFile(t, d.Users), 0o644)
	}
	d.conf.MailRoot, d.conf.PasswdFile = filepath.Join(o.shared, "mail"), filepath.Join(o.shared, "passwd")
	if o.TLS {
		d.setupTLS(t, o.CA)
	}
	if o.OAuth != nil {
		d.conf.OAuthConf = o.OAuth.writeConf(t, d.Dir)
	}
	d.start(t, false)
	return d
}

// failureDelay renders auth_failure_delay.
func failureDelay(d time.Duration) string {
	switch {
	case d < 0:
		return "0"
	case d == 0:
		return "2 secs"
	default:
		return fmt.Sprintf("%d secs", int((d+time.Second-1)/time.Second))
	}
}

// makeDir creates the instance directory outside t.TempDir: Dovecot's unix
// sockets live below it and their paths must stay short.
func (d *Dovecot) makeDir(t testing.TB) {
	t.Helper()
	dir, err := os.MkdirTemp("", "dovecot")
	if err != nil {
		t.Fatalf("creating dovecot directory: %v", err)
	}
	d.Dir = dir
	t.Cleanup(func() { os.RemoveAll(dir) })
	if len(dir) > maxSocketPath {
		t.Fatalf("dovecot directory %s is too long for unix sockets: set TMPDIR to a shorter path", dir)
	}
	d.conf.Dir = dir
	d.conf.Instance = "imapgw-test-" + filepath.Base(dir)
	d.logFile = filepath.Join(dir, "dovecot.log")
	d.outFile = filepath.Join(dir, "dovecot.out")
	// Dovecot's login and auth processes run unprivileged and must traverse the
	// directory to reach passwd and mail (a 0700 directory gives "NO [UNAVAILABLE]
	// Temporary authentication failure"); mail is written as nobody.
	for name, perm := range map[string]os.FileMode{"": 0o755, "state": 0o755, "mail": 0o777} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(p, perm); err != nil {
			t.Fatalf("creating %s: %v", p, err)
		}
		if err := os.Chmod(p, perm); err != nil {
			t.Fatalf("chmod %s: %v", p, err)
		}
	}
	if os.Geteuid() == 0 {
		checkTraversable(t, filepath.Dir(dir))
	}
}

// checkTraversable fails when some directory on the path to dir cannot be
// searched by other users, which Dovecot's unprivileged processes need.
func checkTraversable(t testing.TB, dir string) {
	t.Helper()
	for p := dir; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("checking %s: %v", p, err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			t.Fatalf("%s is not searchable by other users (mode %v): Dovecot's unprivileged processes "+
				"could not reach their files; set TMPDIR to a directory they can reach, e.g. /tmp", p, fi.Mode().Perm())
		}
		if p == filepath.Dir(p) {
			return
		}
	}
}

// setupTLS writes a certificate for the loopback names from ca (or a new CA).
func (d *Dovecot) setupTLS(t testing.TB, ca *CA) {
	t.Helper()
	if ca == nil {
		ca = NewCA(t)
	}
	d.CA = ca
	d.conf.TLS = true
	d.conf.CertFile, d.conf.KeyFile = WriteLeafPEM(t, d.Dir, ca.Leaf(t, "localhost", "127.0.0.1"))
}

// Start starts Dovecot again after Stop, on the same addresses. It fails the test
// that started Dovecot, so call it from that test's goroutine.
func (d *Dovecot) Start() {
	d.t.Helper()
	d.mu.Lock()
	running := d.cmd != nil
	d.mu.Unlock()
	if running {
		d.t.Fatalf("dovecot: Start while running")
	}
	d.start(d.t, true)
}

// Stop shuts Dovecot down as an administrator would (SIGTERM): sessions get
// "* BYE Server shutting down." and are closed at once. It waits for Dovecot to
// exit (about a second) and does nothing when Dovecot is not running.
func (d *Dovecot) Stop() {
	d.halt(false)
}

// Kill ends Dovecot and all its processes at once (SIGKILL), as a crash would:
// sessions are cut with no BYE. It does nothing when Dovecot is not running.
func (d *Dovecot) Kill() {
	d.halt(true)
}

// Freeze stops Dovecot and all its processes (SIGSTOP), as a hung host
// would: connections stay open and nothing answers. Thaw resumes them; the
// test's cleanup thaws a frozen Dovecot before it ends it.
func (d *Dovecot) Freeze() {
	d.signalGroup(syscall.SIGSTOP)
	d.t.Cleanup(d.Thaw)
}

// Thaw resumes a frozen Dovecot (SIGCONT).
func (d *Dovecot) Thaw() { d.signalGroup(syscall.SIGCONT) }

func (d *Dovecot) signalGroup(sig syscall.Signal) {
	d.mu.Lock()
	cmd := d.cmd
	d.mu.Unlock()
	if cmd != nil {
		_ = syscall.Kill(-cmd.Process.Pid, sig)
	}
}

func (d *Dovecot) halt(kill bool) {
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.cmd = nil
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	// The process group holds the master and every child it forked. Signalling
	// only the master would leave logged-in imap processes running for up to 10 s
	// before they notice; signalled themselves, they say BYE at once.
	pgid := cmd.Process.Pid
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	_ = syscall.Kill(-pgid, sig)
	select {
	case <-exited:
	case <-time.After(stopTimeout):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-exited
	}
	// Any child that outlived the master would keep the ports. The group still
	// exists only if such stragglers do, so its id cannot have been reused.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// start launches Dovecot until its listeners greet. With fixedPorts it keeps the
// current addresses (a restart) and retries while they are still in use;
// otherwise it picks free ports and picks again if one was taken meanwhile.
func (d *Dovecot) start(t testing.TB, fixedPorts bool) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		if !fixedPorts {
			d.pickPorts(t)
		}
		logStart, outStart := len(d.Log()), len(readFile(d.outFile))
		err := d.launch(t)
		if err == nil {
			return
		}
		news := d.Log()[logStart:] + readFile(d.outFile)[outStart:]
		if attempt < startAttempts && strings.Contains(news, "Address already in use") {
			time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
			continue
		}
		t.Fatalf("starting dovecot: %v\n%s", err, d.logTail())
	}
}

// pickPorts takes free loopback ports and writes the configuration for them.
func (d *Dovecot) pickPorts(t testing.TB) {
	t.Helper()
	d.conf.Port, d.conf.ProxyPort, d.conf.TLSPort = freePort(t), freePort(t), 0
	d.Addr = hostPort(d.conf.Port)
	d.ProxyAddr = hostPort(d.conf.ProxyPort)
	if d.conf.TLS {
		d.conf.TLSPort = freePort(t)
		d.TLSAddr = hostPort(d.conf.TLSPort)
	}
	f, err := os.Create(filepath.Join(d.Dir, "dovecot.conf"))
	if err != nil {
		t.Fatalf("writing dovecot.conf: %v", err)
	}
	defer f.Close()
	if err := dovecotConf.Execute(f, &d.conf); err != nil {
		t.Fatalf("writing dovecot.conf: %v", err)
	}
	if err := f.Chmod(0o644); err != nil {
		t.Fatalf("chmod dovecot.conf: %v", err)
	}
}

// launch runs dovecot in the foreground (-F): daemonized, its children would keep
// our output pipes open. It gets its own process group so that Stop can reach the
// children too.
func (d *Dovecot) launch(t testing.TB) error {
	t.Helper()
	d.cleanRunDir(t)
	out, err := os.OpenFile(d.outFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("opening %s: %v", d.outFile, err)
	}
	defer out.Close()
	cmd := exec.Command(d.bin, "-F", "-c", filepath.Join(d.Dir, "dovecot.conf"))
	cmd.Stdout, cmd.Stderr = out, out
	exited, err := startGroup(cmd)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.cmd, d.exited = cmd, exited
	d.mu.Unlock()
	if err := d.waitReady(exited); err != nil {
		d.Stop()
		return err
	}
	return nil
}

// startGroup starts cmd in a process group of its own, so that a signal to
// the group reaches the children it forks too, and returns a channel closed
// when it exits.
func startGroup(cmd *exec.Cmd) (<-chan struct{}, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("running %s: %w", cmd.Path, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	return exited, nil
}

// cleanRunDir empties base_dir between runs: a stale socket left by a killed
// process would be found and refused.
func (d *Dovecot) cleanRunDir(t testing.TB) {
	t.Helper()
	run := filepath.Join(d.Dir, "run")
	if err := os.RemoveAll(run); err != nil {
		t.Fatalf("cleaning %s: %v", run, err)
	}
	if err := os.Mkdir(run, 0o755); err != nil {
		t.Fatalf("creating %s: %v", run, err)
	}
	if err := os.Chmod(run, 0o755); err != nil {
		t.Fatalf("chmod %s: %v", run, err)
	}
}

// waitReady polls every listener until each greets, Dovecot exits, or
// startTimeout passes.
func (d *Dovecot) waitReady(exited <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := d.probeAll()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New("dovecot exited during startup")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dovecot not ready after %v: %w", startTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// probeAll checks that every listener answers with an IMAP greeting.
func (d *Dovecot) probeAll() error {
	if err := probe(d.Addr, nil, nil); err != nil {
		return err
	}
	local := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	if err := probe(d.ProxyAddr, local, nil); err != nil {
		return err
	}
	if d.TLSAddr != "" {
		return probe(d.TLSAddr, nil, &tls.Config{RootCAs: d.CA.Pool(), ServerName: "localhost"})
	}
	return nil
}

// probe dials addr, sends a PROXY header and shakes hands when asked, and reads
// the greeting.
func probe(addr string, header *proxyproto.Header, tlsConf *tls.Config) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return err
	}
	if header != nil {
		if _, err := header.WriteTo(conn); err != nil {
			return fmt.Errorf("%s: writing PROXY header: %w", addr, err)
		}
	}
	if tlsConf != nil {
		tc := tls.Client(conn, tlsConf)
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("%s: TLS handshake: %w", addr, err)
		}
		conn = tc
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("%s: reading greeting: %w", addr, err)
	}
	if !strings.HasPrefix(line, "* OK") {
		return fmt.Errorf("%s: greeting %q, want * OK", addr, strings.TrimSpace(line))
	}
	_, _ = conn.Write([]byte("p LOGOUT\r\n"))
	return nil
}

// Log returns Dovecot's whole log so far (log_path, where info lines such as
// "Login: user=<alice>, method=PLAIN, rip=127.0.0.9" go too).
func (d *Dovecot) Log() string {
	return readFile(d.logFile)
}

// WaitLog waits up to timeout for a log line containing substr and returns the
// first such line; otherwise it fails the test. Dovecot writes its log through a
// separate process, so a line may appear a little after the reply it describes.
func (d *Dovecot) WaitLog(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for line := range strings.Lines(d.Log()) {
			if strings.Contains(line, substr) {
				return strings.TrimRight(line, "\n")
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no dovecot log line containing %q within %v\n%s", substr, timeout, d.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logTail returns the last lines of the log and what Dovecot printed before its
// log was set up (configuration errors).
func (d *Dovecot) logTail() string {
	lines := strings.Split(strings.TrimRight(d.Log(), "\n"), "\n")
	lines = lines[max(0, len(lines)-30):]
	s := "--- " + d.logFile + " (tail) ---\n" + strings.Join(lines, "\n")
	if out := readFile(d.outFile); out != "" {
		s += "\n--- dovecot output ---\n" + out
	}
	return s
}

func readFile(name string) string {
	b, _ := os.ReadFile(name)
	return string(b)
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func hostPort(port int) string {
	return net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
}

// AuthFailures counts the failed password checks Dovecot logged for client
// address rip (auth_verbose lines "passwd-file(user,rip,…): Password mismatch"
// or "unknown user"): how many guesses from rip reached Dovecot. The line is
// written as the check fails, before auth_failure_delay, through Dovecot's log
// process, so it may lag the reply a little when there is no delay.
func (d *Dovecot) AuthFailures(rip string) int {
	n := 0
	for line := range strings.Lines(d.Log()) {
		if strings.Contains(line, "passwd-file(") && strings.Contains(line, ","+rip+",") &&
			(strings.Contains(line, "Password mismatch") || strings.Contains(line, "unknown user")) {
			n++
		}
	}
	return n
}
