package testbed

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RedisOptions configures StartRedis. The zero value is Debian's redis-server
// with its defaults, except what a test needs: its own port and directory, no
// daemon, and no RDB snapshots written behind the test's back.
type RedisOptions struct {
	// Password, when set, is required from clients (requirepass).
	Password string
	// AppendOnly turns on the AOF (appendonly yes, appendfsync always), as the
	// README advises operators, so that state survives a SIGKILL and restart.
	AppendOnly bool
}

// Redis is a redis-server started by a test on a free loopback port with its
// data in a temporary directory. It is stopped when the test ends.
type Redis struct {
	// Addr is host:port of the server, for redis://Addr.
	Addr string
	// Dir holds redis.conf, the data files and redis.log.
	Dir string

	t       testing.TB
	bin     string
	opts    RedisOptions
	logFile string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited <-chan struct{}
}

// StartRedis runs redis-server for the test and waits until it answers PING.
func StartRedis(t testing.TB, o RedisOptions) *Redis {
	t.Helper()
	Need(t, "redis-server")
	r := &Redis{t: t, bin: Path("redis-server"), opts: o, Dir: t.TempDir()}
	r.logFile = filepath.Join(r.Dir, "redis.log")
	r.Addr = hostPort(freePort(t))
	r.writeConf(t)
	r.start(t)
	t.Cleanup(r.Kill)
	return r
}

// URL is the redis:// URL of the server, with the password when one is set.
func (r *Redis) URL() string {
	if r.opts.Password != "" {
		return "redis://:" + r.opts.Password + "@" + r.Addr + "/0"
	}
	return "redis://" + r.Addr + "/0"
}

func (r *Redis) writeConf(t testing.TB) {
	t.Helper()
	_, port, _ := net.SplitHostPort(r.Addr)
	lines := []string{
		"bind 127.0.0.1",
		"port " + port,
		"daemonize no",
		"dir " + r.Dir,
		"logfile " + r.logFile,
		`save ""`,
	}
	if r.opts.Password != "" {
		lines = append(lines, "requirepass "+r.opts.Password)
	}
	if r.opts.AppendOnly {
		lines = append(lines, "appendonly yes", "appendfsync always")
	}
	conf := strings.Join(lines, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(r.Dir, "redis.conf"), []byte(conf), 0o600); err != nil {
		t.Fatalf("writing redis.conf: %v", err)
	}
}

// Start starts a stopped or killed server again on the same port and data.
func (r *Redis) Start() {
	r.t.Helper()
	r.mu.Lock()
	running := r.cmd != nil
	r.mu.Unlock()
	if running {
		r.t.Fatalf("redis: Start while running")
	}
	r.start(r.t)
}

func (r *Redis) start(t testing.TB) {
	t.Helper()
	// A restart right after a kill may find the port still held for a moment:
	// retry as Dovecot's harness does.
	for attempt := 1; ; attempt++ {
		err := r.launch()
		if err == nil {
			return
		}
		if attempt < startAttempts && strings.Contains(readFile(r.logFile), "Address already in use") {
			time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
			continue
		}
		t.Fatalf("starting redis-server: %v\n%s", err, r.Log())
	}
}

func (r *Redis) launch() error {
	cmd := exec.Command(r.bin, filepath.Join(r.Dir, "redis.conf"))
	exited, err := startGroup(cmd)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.cmd, r.exited = cmd, exited
	r.mu.Unlock()
	deadline := time.Now().Add(startTimeout)
	for {
		err := r.ping()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			r.mu.Lock()
			r.cmd = nil
			r.mu.Unlock()
			return errors.New("redis-server exited during startup")
		default:
		}
		if time.Now().After(deadline) {
			r.Kill()
			return fmt.Errorf("redis-server not ready after %v: %w", startTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ping sends AUTH (when a password is set) and PING in RESP inline form and
// expects +PONG.
func (r *Redis) ping() error {
	c, err := net.DialTimeout("tcp", r.Addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	req := "PING\r\n"
	if r.opts.Password != "" {
		req = "AUTH " + r.opts.Password + "\r\n" + req
	}
	if _, err := c.Write([]byte(req)); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		switch {
		case strings.HasPrefix(line, "+PONG"):
			return nil
		case strings.HasPrefix(line, "-"):
			return fmt.Errorf("redis: %s", strings.TrimSpace(line))
		}
	}
}

// Stop shuts the server down as an administrator would (SIGTERM) and waits.
func (r *Redis) Stop() { r.halt(syscall.SIGTERM) }

// Kill ends the server at once (SIGKILL), as a crash would.
func (r *Redis) Kill() { r.halt(syscall.SIGKILL) }

func (r *Redis) halt(sig syscall.Signal) {
	r.mu.Lock()
	cmd, exited := r.cmd, r.exited
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	// A stopped (SIGSTOP) server would not act on SIGTERM until continued.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-exited:
	case <-time.After(stopTimeout):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// Pause freezes the server (SIGSTOP): connections stay open and nothing is
// answered, as with a hung host. Resume continues it.
func (r *Redis) Pause() { r.signal(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (r *Redis) Resume() { r.signal(syscall.SIGCONT) }

func (r *Redis) signal(sig syscall.Signal) {
	r.mu.Lock()
	cmd := r.cmd
	r.mu.Unlock()
	if cmd == nil {
		r.t.Fatalf("redis: %v while not running", sig)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		r.t.Fatalf("redis: %v: %v", sig, err)
	}
}

// Log returns what the server wrote to its log file so far.
func (r *Redis) Log() string { return readFile(r.logFile) }
