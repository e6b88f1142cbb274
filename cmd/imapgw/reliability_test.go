package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

// attacker is the source that fails logins until it is banned; bans.allow in
// adminTestConfig covers only ::1, so 127.0.0.9 can be banned.
const attacker = "127.0.0.9"

// TestStateDirFaults: while server.state_dir cannot be written (gone with a
// file in its place, bans.json turned into a directory, or the filesystem full),
// a source that earns a ban is banned in memory at once, the failed save is
// logged, and everyone else is served; once the directory is repaired the ban
// is saved, and a restarted gateway still enforces it.
func TestStateDirFaults(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, dir string) // before the gateway starts
		brk   func(t *testing.T, dir string)
		fix   func(t *testing.T, dir string)
	}{
		{"a file in its place", nil, func(t *testing.T, dir string) {
			must(t, os.Rename(dir, dir+".away"))
			must(t, os.WriteFile(dir, []byte("not a directory"), 0o600))
		}, func(t *testing.T, dir string) {
			must(t, os.Remove(dir))
			must(t, os.Rename(dir+".away", dir))
		}},
		{"bans.json a directory", nil, func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "bans.json"))
			must(t, os.MkdirAll(filepath.Join(dir, "bans.json", "x"), 0o700))
		}, func(t *testing.T, dir string) {
			must(t, os.RemoveAll(filepath.Join(dir, "bans.json")))
		}},
		{"filesystem full", mountTinyFS, func(t *testing.T, dir string) {
			fillUp(t, filepath.Join(dir, "filler"))
		}, func(t *testing.T, dir string) {
			must(t, os.Remove(filepath.Join(dir, "filler")))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			be := startDemoBackend(t)
			cfg := adminTestConfig(t, be.Addr)
			cfg.Server.StateDir = filepath.Join(t.TempDir(), "state")
			cfg.Bans.SourceFailures = 2
			must(t, os.MkdirAll(cfg.Server.StateDir, 0o700))
			if tc.setup != nil {
				tc.setup(t, cfg.Server.StateDir)
			}
			logs := &testbed.LogBuffer{}
			g, stop := startTestGateway(t, cfg, "", logs)

			tc.brk(t, cfg.Server.StateDir)
			earnBan(t, g)
			if err := tryLoginFrom(attacker, g.srv.Addrs()[0].String(), "demo", "demo"); err == nil || !strings.Contains(err.Error(), "refused") {
				t.Errorf("the banned source while the state dir was broken: %v, want refused at accept", err)
			}
			saveNow(g)
			if !strings.Contains(logs.String(), "ban state not saved") {
				t.Errorf("no log of the failed save:\n%s", logs.String())
			}
			if err := tryLoginFrom("127.0.0.1", g.srv.Addrs()[0].String(), "demo", "demo"); err != nil {
				t.Errorf("an honest client while the state dir is broken: %v", err)
			}

			tc.fix(t, cfg.Server.StateDir)
			saveNow(g)
			data, err := os.ReadFile(filepath.Join(cfg.Server.StateDir, "bans.json"))
			if err != nil || !strings.Contains(string(data), attacker) {
				t.Fatalf("after the repair bans.json = %q, %v; want the ban of %s", data, err, attacker)
			}
			stop()

			again, _ := startTestGateway(t, cfg, "", logs)
			if err := tryLoginFrom(attacker, again.srv.Addrs()[0].String(), "demo", "demo"); err == nil || !strings.Contains(err.Error(), "refused") {
				t.Errorf("the banned source after a restart: %v, want refused at accept (the ban saved after the repair)", err)
			}
		})
	}
}

// TestStartWithUnusableStateDir: a state_dir that cannot be created stops the
// start with an error naming the key, instead of running without saved bans.
func TestStartWithUnusableStateDir(t *testing.T) {
	be := startDemoBackend(t)
	cfg := adminTestConfig(t, be.Addr)
	file := filepath.Join(t.TempDir(), "file")
	must(t, os.WriteFile(file, nil, 0o600))
	cfg.Server.StateDir = filepath.Join(file, "state")
	g, err := startGateway(cfg, "", &testbed.LogBuffer{})
	if err == nil {
		g.shutdown()
		t.Fatalf("startGateway with state_dir below a file = nil error, want one naming server.state_dir")
	}
	if !strings.Contains(err.Error(), "state_dir") {
		t.Errorf("startGateway error = %q, want it to name server.state_dir", err)
	}
}

// TestReloadUnderLoad: clients log in, NOOP and log out without pause while
// the configuration is reloaded again and again (rate, log level, a listener
// added and removed): no login fails and sessions in IDLE stay up.
func TestReloadUnderLoad(t *testing.T) {
	const workers, reloads, idlers = 16, 8, 10
	be := startDemoBackend(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "imapgw.toml")
	writeLoadConfig(t, path, dir, be.Addr, 0)
	cfg, err := conf.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testbed.LogBuffer{}
	g, _ := startTestGateway(t, cfg, path, logs)
	addr := g.srv.Addrs()[0].String()

	var idle []*idleClient
	for i := 0; i < idlers; i++ {
		c, err := startIdle(addr)
		if err != nil {
			t.Fatalf("IDLE session %d: %v", i, err)
		}
		defer c.conn.Close()
		idle = append(idle, c)
	}

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := tryLoginFrom("127.0.0.1", addr, "demo", "demo"); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	for i := 1; i <= reloads; i++ {
		time.Sleep(50 * time.Millisecond)
		writeLoadConfig(t, path, dir, be.Addr, i)
		if err := g.reload(); err != nil {
			t.Errorf("reload %d: %v", i, err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("%d logins during %d reloads, %d failed", ok.Load(), reloads, failed.Load())
	if failed.Load() != 0 || ok.Load() < workers {
		t.Errorf("%d logins failed (first: %v), %d succeeded during the reloads; want none failed", failed.Load(), firstErr.Load(), ok.Load())
	}
	for i, c := range idle {
		if err := c.done(); err != nil {
			t.Errorf("IDLE session %d after %d reloads: %v", i, reloads, err)
		}
	}
}

// writeLoadConfig writes generation gen of a config whose every reload changes
// something: the connection rate, the log level, and a second listener that
// comes and goes. Loopback stays allow-listed, so the load is never limited.
func writeLoadConfig(t *testing.T, path, dir, backend string, gen int) {
	t.Helper()
	extra := ""
	if gen%2 == 1 {
		extra = "[[listen]]\naddress = \"127.0.0.3:0\"\ntls = \"starttls\"\n"
	}
	level := []string{"info", "debug", "warn"}[gen%3]
	text := fmt.Sprintf(`[server]
hostname = "localhost"
state_dir = %q
drain_timeout = "1s"

[[listen]]
address = "127.0.0.1:0"
tls = "implicit"

%s
[tls]
certificate = "self-signed"
names = ["127.0.0.1"]

[backend]
servers = [%q]
client_ip = "none"

[limits]
connection_rate = %d

[bans]
failure_delay = "0s"

[log]
level = %q

[admin]
address = ""
`, filepath.Join(dir, "state"), extra, backend, 20+gen, level)
	must(t, os.WriteFile(path, []byte(text), 0o600))
}

// startTestGateway starts the whole process from cfg; the returned stop shuts
// it down, and runs at the test's end if the test did not call it.
func startTestGateway(t *testing.T, cfg *conf.Config, path string, logs *testbed.LogBuffer) (*gateway, func()) {
	t.Helper()
	g, err := startGateway(cfg, path, logs)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() { once.Do(g.shutdown) }
	t.Cleanup(func() {
		stop()
		if n := g.srv.Panics(); n != 0 {
			t.Errorf("%v panics recovered", n)
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs.String())
		}
	})
	return g, stop
}

// earnBan fails logins from the attacker's address until the gateway says BYE.
func earnBan(t *testing.T, g *gateway) {
	t.Helper()
	for i := 0; i < 5; i++ {
		err := tryLoginFrom(attacker, g.srv.Addrs()[0].String(), "demo", fmt.Sprintf("wrong-%d", i))
		if err != nil && strings.Contains(err.Error(), "refused") {
			return
		}
	}
	if len(g.lim.Bans()) == 0 {
		t.Fatalf("%s not banned after 5 failed logins", attacker)
	}
}

// saveNow runs the limiter's save loop for one final save, the path that logs
// a failure, without waiting for its period.
func saveNow(g *gateway) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	g.lim.Run(ctx)
}

// tryLoginFrom opens a TLS session from the local address from, logs in and
// runs NOOP and LOGOUT. A refusal at accept is reported as "refused".
func tryLoginFrom(from, addr, user, pass string) error {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	raw, err := d.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return fmt.Errorf("refused: %w", err) // reset at accept, before connect completed
	}
	if err != nil {
		return err
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
	if err := c.Handshake(); err != nil {
		return fmt.Errorf("refused: %w", err)
	}
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "a LOGIN %s %q\r\nb NOOP\r\nc LOGOUT\r\n", user, pass)
	for _, want := range []string{"* OK", "a OK", "b OK", "c OK"} {
		if err := readUntil(br, want); err != nil {
			return err
		}
	}
	return nil
}

// readUntil reads lines until one starts with prefix; a tagged NO or BAD, or
// a BYE before it, is an error.
func readUntil(br *bufio.Reader, prefix string) error {
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return fmt.Errorf("waiting for %q: %w", prefix, err)
		}
		if strings.HasPrefix(l, prefix) {
			return nil
		}
		if f := strings.Fields(l); len(f) > 1 && (f[1] == "NO" || f[1] == "BAD" || (f[1] == "BYE" && prefix != "c OK")) {
			return fmt.Errorf("waiting for %q: %s", prefix, strings.TrimSpace(l))
		}
	}
}

// idleClient is a session left in IDLE.
type idleClient struct {
	conn *tls.Conn
	br   *bufio.Reader
}

func startIdle(addr string) (*idleClient, error) {
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	ic := &idleClient{conn: c, br: bufio.NewReader(c)}
	if _, err := c.Write([]byte("a LOGIN demo demo\r\nb SELECT INBOX\r\nc IDLE\r\n")); err != nil {
		return nil, err
	}
	for _, want := range []string{"a OK", "b OK", "+"} {
		if err := readUntil(ic.br, want); err != nil {
			return nil, err
		}
	}
	c.SetDeadline(time.Time{})
	return ic, nil
}

// done ends IDLE and checks the session still answers.
func (c *idleClient) done() error {
	c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.conn.Write([]byte("DONE\r\nd NOOP\r\n")); err != nil {
		return err
	}
	if err := readUntil(c.br, "c OK"); err != nil {
		return err
	}
	return readUntil(c.br, "d OK")
}

// mountTinyFS mounts a 16 KB tmpfs on dir, so that filling it makes writes fail
// with ENOSPC. Mounting needs root (CAP_SYS_ADMIN); elsewhere the test says so.
func mountTinyFS(t *testing.T, dir string) {
	t.Helper()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs", dir).CombinedOutput()
	if err != nil {
		t.Skipf("!!! SKIPPED: cannot mount a tmpfs to fill (needs root): %v %s !!!", err, out)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
}

// fillUp writes name until the filesystem is full.
func fillUp(t *testing.T, name string) {
	t.Helper()
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	block := make([]byte, 1024)
	for {
		if _, err := f.Write(block); err != nil {
			if !strings.Contains(err.Error(), "no space") {
				t.Fatalf("filling %s: %v", name, err)
			}
			return
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
