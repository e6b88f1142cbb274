package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/imapgw/imapgw/internal/testbed"
)

// limitedProcess is an imapgw process started by a test.
type limitedProcess struct {
	cmd  *exec.Cmd
	logs *testbed.LogBuffer // its stdout and stderr
	done chan struct{}      // closed when it has exited
}

// startLimitedProcess runs `imapgw run -config CONFIG` with config written to a
// file, under a file-descriptor limit of nofile, and stops it (SIGTERM, then
// SIGKILL) when the test ends. Its log is printed if the test fails.
func startLimitedProcess(t *testing.T, config string, nofile int) *limitedProcess {
	t.Helper()
	path := filepath.Join(t.TempDir(), "imapgw.toml")
	must(t, os.WriteFile(path, []byte(config), 0o600))
	p := &limitedProcess{logs: &testbed.LogBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], "run", "-config", path)
	p.cmd.Env = append(os.Environ(), asMain+"=1", asMainNofile+"="+strconv.Itoa(nofile))
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	must(t, p.cmd.Start())
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
			t.Errorf("imapgw did not stop within 10s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("imapgw log:\n%s", p.logs.String())
		}
	})
	return p
}

// running fails the test if the process has exited.
func (p *limitedProcess) running(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		t.Fatalf("imapgw exited: %v", p.cmd.ProcessState)
	default:
	}
}

// fds counts the process's open file descriptors.
func (p *limitedProcess) fds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("counting imapgw's file descriptors: %v", err)
	}
	return len(ents)
}

// waitReady polls the admin endpoint's /readyz (listeners up and a
// certificate loaded) until it answers 200.
func (p *limitedProcess) waitReady(t *testing.T, admin string, d time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(d); ; time.Sleep(100 * time.Millisecond) {
		p.running(t)
		if resp, err := http.Get("http://" + admin + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("imapgw not ready after %v", d)
		}
	}
}
