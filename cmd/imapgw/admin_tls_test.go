package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imapgw/imapgw/admin"
	"github.com/imapgw/imapgw/internal/testbed"
)

// startTLSAdminProcess runs `imapgw run -config path` as a child process (the
// test binary run as main, see TestMain) and stops it with SIGTERM when the
// test ends; the returned buffer holds its log. Unlike startProcess it does
// not probe the admin endpoint over plain http: the test talks https to it.
func startTLSAdminProcess(t *testing.T, path string) (*exec.Cmd, *testbed.LogBuffer) {
	t.Helper()
	logs := &testbed.LogBuffer{}
	cmd := exec.Command(os.Args[0], "run", "-config", path)
	cmd.Env = append(os.Environ(), asMain+"=1")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("imapgw run after SIGTERM: %v", err)
			}
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("imapgw run did not stop within 15 s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("imapgw log:\n%s", logs.String())
		}
	})
	return cmd, logs
}

// waitHealthy polls /healthz through c until it answers.
func waitHealthy(t *testing.T, c *admin.Client, logs *testbed.LogBuffer) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = c.Health(ctx)
		cancel()
		if err == nil {
			return
		}
	}
	t.Fatalf("admin endpoint not healthy within 20 s: %v\nlog:\n%s", err, logs.String())
}

// TestAdminTLSProcess runs the real process with admin.tls, once with the
// gateway's own certificate and once with separate files, and checks that
// `imapgw bans` and `imapgw status` work over https from the config file
// alone, that plain http to the port fails, and that the CLI verifies the
// certificate (issue 11, point 7).
func TestAdminTLSProcess(t *testing.T) {
	be := startDemoBackend(t)
	ca := testbed.NewCA(t)
	caDir := t.TempDir()
	caFile := ca.WritePEM(t, caDir)
	cases := []struct {
		mode string
		// certs returns the [tls] and [admin] lines for a fresh dir.
		certs func(t *testing.T, dir string) (tlsLines, adminLines string)
	}{
		{"gateway", func(t *testing.T, dir string) (string, string) {
			// The IMAP certificate comes from files signed by the test CA; the
			// CLI checks it against server.hostname.
			cert, key := testbed.WriteLeafPEM(t, dir, ca.Leaf(t, "localhost", "127.0.0.1"))
			return fmt.Sprintf("certificate = \"files\"\ncert_file = %q\nkey_file = %q\n", cert, key),
				"tls = \"gateway\"\n"
		}},
		{"files", func(t *testing.T, dir string) (string, string) {
			// The IMAP certificate is self-signed; the admin endpoint has its
			// own, for a name the CLI takes from admin.names.
			cert, key := testbed.WriteLeafPEM(t, dir, ca.Leaf(t, "admin.test"))
			return "certificate = \"self-signed\"\n",
				fmt.Sprintf("tls = \"files\"\ncert_file = %q\nkey_file = %q\nnames = [\"admin.test\"]\n", cert, key)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.mode, func(t *testing.T) {
			dir := t.TempDir()
			tokenFile := filepath.Join(dir, "token")
			must(t, os.WriteFile(tokenFile, []byte("tls-token-7\n"), 0o600))
			addr := freeAddr(t)
			tlsLines, adminLines := tc.certs(t, dir)
			path := filepath.Join(dir, "imapgw.toml")
			must(t, os.WriteFile(path, []byte(fmt.Sprintf(`[server]
hostname = "localhost"
state_dir = %q
drain_timeout = "1s"

[[listen]]
address = "127.0.0.1:0"

[tls]
%s
[backend]
servers = [%q]
client_ip = "none"

[admin]
address = %q
token_file = %q
ca_file = %q
%s`, filepath.Join(dir, "state"), tlsLines, be.Addr, addr, tokenFile, caFile, adminLines)), 0o600))

			_, logs := startTLSAdminProcess(t, path)
			var stdout, stderr strings.Builder
			cli := func(args ...string) int {
				stdout.Reset()
				stderr.Reset()
				return run(args, &stdout, &stderr)
			}
			// The CLI's own client, as `imapgw bans` builds it from the file.
			f := newAdminFlags("probe", io.Discard)
			must(t, f.fs.Parse([]string{"-config", path}))
			c, err := f.client()
			must(t, err)
			waitHealthy(t, c, logs)

			if rc := cli("bans", "add", "192.0.2.8", "-for", "1h", "-reason", "over tls", "-config", path); rc != 0 {
				t.Fatalf("imapgw bans add -config (https) = %d %s%s", rc, stdout.String(), stderr.String())
			}
			if rc := cli("bans", "list", "-config", path); rc != 0 || !strings.Contains(stdout.String(), "192.0.2.8/32") {
				t.Errorf("imapgw bans list -config (https) = %d %s%s, want the ban", rc, stdout.String(), stderr.String())
			}
			if rc := cli("status", "-config", path); rc != 0 || !strings.Contains(stdout.String(), "ready") {
				t.Errorf("imapgw status -config (https) = %d %s%s, want the status", rc, stdout.String(), stderr.String())
			}

			// Plain HTTP to the TLS port gets no API answer.
			req, _ := http.NewRequest("GET", "http://"+addr+"/api/v1/bans", nil)
			req.Header.Set("Authorization", "Bearer tls-token-7")
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				// net/http's answer to plain HTTP on a TLS port.
				if resp.StatusCode != http.StatusBadRequest || strings.Contains(string(body), "192.0.2.8") {
					t.Errorf("plain http GET /api/v1/bans = %d %s, want 400 and no answer from the API", resp.StatusCode, body)
				}
			}
			if rc := cli("bans", "list", "-admin", addr, "-token-file", tokenFile); rc != 1 {
				t.Errorf("imapgw bans list over plain http = %d %s%s, want 1", rc, stdout.String(), stderr.String())
			}
			// The certificate is verified: the system roots do not know the test CA.
			if rc := cli("bans", "list", "-admin", "https://"+addr, "-token-file", tokenFile); rc != 1 || !strings.Contains(stderr.String(), "certificate") {
				t.Errorf("imapgw bans list over https without the CA = %d %s%s, want 1 and a certificate error", rc, stdout.String(), stderr.String())
			}
			if rc := cli("bans", "list", "-admin", addr, "-token-file", tokenFile, "-ca-file", caFile); (rc == 0) != (tc.mode == "gateway") {
				// -ca-file alone verifies the dialled address, 127.0.0.1: only
				// the gateway's certificate lists it.
				t.Errorf("imapgw bans list -ca-file (%s) = %d %s%s", tc.mode, rc, stdout.String(), stderr.String())
			}
		})
	}
}
