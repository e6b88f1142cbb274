package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/internal/testbed"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestDemo runs `imapgw demo` and reads the demo mailbox with curl, as the
// README's first command promises.
func TestDemo(t *testing.T) {
	testbed.Need(t, "curl")
	imaps, imap := freeAddr(t), freeAddr(t)
	var stdout, stderr testbed.LogBuffer
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		done <- runDemo([]string{"-imaps", imaps, "-imap", imap, "-admin", ""}, &stdout, &stderr, stop)
	}()
	defer func() {
		close(stop)
		if code := <-done; code != 0 {
			t.Errorf("demo exited %d: %s", code, stderr.String())
		}
	}()
	curl := func(args ...string) string {
		var out []byte
		var err error
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			out, err = exec.Command("curl", append([]string{"-sS", "-k", "--max-time", "10", "-u", "demo:demo"}, args...)...).CombinedOutput()
			if err == nil {
				return string(out)
			}
		}
		t.Fatalf("curl %v: %v\n%s\ndemo log:\n%s", args, err, out, stderr.String())
		return ""
	}
	if out := curl("imaps://" + imaps + "/INBOX"); !strings.Contains(out, "INBOX/Archive") {
		t.Errorf("curl imaps://…/INBOX = %q, want the mailbox's folders", out)
	}
	if out := curl("imaps://" + imaps + "/INBOX?ALL"); !strings.Contains(out, "* SEARCH 1 2 3") {
		t.Errorf("curl imaps://…/INBOX?ALL = %q, want 3 messages", out)
	}
	if out := curl("--ssl-reqd", "imap://"+imap+"/INBOX;UID=1"); !strings.Contains(out, "Subject: Welcome to imapgw") {
		t.Errorf("curl over STARTTLS = %q, want the first message", out)
	}
	if !strings.Contains(stdout.String(), "curl -k imaps://"+imaps+"/INBOX -u demo:demo") {
		t.Errorf("the banner does not say how to connect:\n%s", stdout.String())
	}
	if strings.Contains(stderr.String(), "password") {
		t.Errorf("the log mentions a password:\n%s", stderr.String())
	}
}

func TestCheckCommand(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	os.WriteFile(good, []byte("[[listen]]\naddress = \":993\"\n[tls]\ncertificate = \"self-signed\"\n"), 0o644)
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[[listen]]\naddress = \":993\"\n[limits]\nidle_timeout = \"soon\"\nmax_lines = 1\n"), 0o644)
	cases := []struct {
		args      []string
		code      int
		out, errs string
	}{
		{[]string{"check", "-config", good}, 0, good + ": ok", ""},
		{[]string{"check", "-config", bad}, 1, "", bad + ":4: limits.idle_timeout: bad duration"},
		{[]string{"check", "-config", filepath.Join(dir, "missing.toml")}, 1, "", "reading config"},
		{[]string{"version"}, 0, "imapgw ", ""},
		{[]string{"-h"}, 0, "imapgw check  -config FILE", ""},
		{[]string{"frobnicate"}, 2, "", "unknown command"},
		{nil, 2, "", "Usage:"},
	}
	for _, tc := range cases {
		var out, errs bytes.Buffer
		code := run(tc.args, &out, &errs)
		if code != tc.code || !strings.Contains(out.String(), tc.out) || !strings.Contains(errs.String(), tc.errs) {
			t.Errorf("run(%q) = %d, stdout %q, stderr %q; want %d, %q, %q", tc.args, code, out.String(), errs.String(), tc.code, tc.out, tc.errs)
		}
	}
}

// TestPoolCommandsUsage: the pool commands are in the usage text, and wrong
// invocations exit 2 with a message before calling anything.
func TestPoolCommandsUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"-h"}, &out, &errb); code != 0 ||
		!strings.Contains(out.String(), "imapgw backends [list] | drain NAME [-kick] | undrain NAME") ||
		!strings.Contains(out.String(), "imapgw users  where USER | move USER NAME | kick USER") {
		t.Errorf("imapgw -h = %d:\n%s", code, out.String())
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"backends", "bogus"}, `unknown command "bogus"`},
		{[]string{"backends", "drain"}, "want 1 argument(s), got 0"},
		{[]string{"backends", "undrain", "a", "b"}, "want 1 argument(s), got 2"},
		{[]string{"users"}, "imapgw users where USER"},
		{[]string{"users", "move", "alice"}, "want 2 argument(s), got 1"},
		{[]string{"users", "where"}, "want 1 argument(s), got 0"},
		{[]string{"users", "kick", "-bogus", "alice"}, "flag provided but not defined: -bogus"},
	}
	for _, tt := range cases {
		out.Reset()
		errb.Reset()
		if code := run(tt.args, &out, &errb); code != 2 || !strings.Contains(errb.String(), tt.want) {
			t.Errorf("imapgw %s = %d %q, want 2 and %q", strings.Join(tt.args, " "), code, errb.String(), tt.want)
		}
	}
	for _, args := range [][]string{{"backends", "-h"}, {"users", "help"}} {
		out.Reset()
		if code := run(args, &out, &errb); code != 0 || !strings.Contains(out.String(), "Usage:") {
			t.Errorf("imapgw %s = %d %q", strings.Join(args, " "), code, out.String())
		}
	}
}
