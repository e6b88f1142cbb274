package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imapgw/imapgw/internal/timerslack"
	"golang.org/x/sys/unix"
)

// TestRunTimerSlack: `imapgw run` started with the kernel's default timer
// slack runs every thread with timerslack.Slack, as the same process (its
// PID is the one started), and serves.
func TestRunTimerSlack(t *testing.T) {
	be := startDemoBackend(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "imapgw.toml")
	procConfig{backend: be.Addr, state: filepath.Join(dir, "state"), drain: "1s"}.write(t, path)

	runtime.LockOSThread() // the child inherits the slack of the thread that forks it
	before, err := timerslack.Current()
	if err != nil {
		t.Fatal(err)
	}
	must(t, unix.Prctl(unix.PR_SET_TIMERSLACK, 50_000, 0, 0, 0)) // the kernel's default
	p := launchProcess(t, path)
	unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(before), 0, 0, 0)
	runtime.UnlockOSThread()
	p.waitStarted(t)

	if err := tryLoginFrom("127.0.0.1", p.imaps, "demo", "demo"); err != nil {
		t.Errorf("login: %v", err)
	}
	pid := p.cmd.Process.Pid
	tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join("/proc", task.Name(), "timerslack_ns"))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(b)); got != strconv.FormatInt(timerslack.Slack.Nanoseconds(), 10) {
			t.Errorf("thread %s of %d: timer slack %s ns, want %d", task.Name(), pid, got, timerslack.Slack.Nanoseconds())
		}
	}
	if strings.Contains(p.logs.String(), "timer slack left") {
		t.Errorf("the gateway says it left the slack: %s", logLine(p.logs.String(), "timer slack"))
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Errorf("imapgw run exited %d after SIGTERM, want 0", code)
	}
}
