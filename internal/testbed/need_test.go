package testbed

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// recorder captures Skipf and Fatalf; like the real ones they end the goroutine.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper() {}

func (r *recorder) Skipf(format string, args ...any) {
	r.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// record runs fn on a recorder in its own goroutine, so Goexit ends only fn.
func record(t *testing.T, fn func(testing.TB)) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(r)
	}()
	<-done
	return r
}

func TestNeed(t *testing.T) {
	tests := []struct {
		name        string
		ci          string
		bins        []string
		wantSkipped string // substring; "" means not skipped
		wantFailed  string // substring; "" means not failed
		wantNeither bool
	}{
		{name: "present", bins: []string{"sh"}, wantNeither: true},
		{name: "none asked", bins: nil, wantNeither: true},
		{name: "missing locally", bins: []string{"sh", "imapgw-no-such-binary"},
			wantSkipped: "apt-get install imapgw-no-such-binary"},
		{name: "missing in CI", ci: "true", bins: []string{"imapgw-no-such-binary"},
			wantFailed: "CI: imapgw-no-such-binary is missing: run scripts/deps.sh"},
		{name: "CI only when true", ci: "1", bins: []string{"imapgw-no-such-binary"},
			wantSkipped: "imapgw-no-such-binary is not installed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("CI", tt.ci)
			r := record(t, func(tb testing.TB) { Need(tb, tt.bins...) })
			switch {
			case tt.wantNeither && (r.skipped != "" || r.failed != ""):
				t.Errorf("Need(%q) skipped %q, failed %q; want neither", tt.bins, r.skipped, r.failed)
			case tt.wantSkipped != "" && !strings.Contains(r.skipped, tt.wantSkipped):
				t.Errorf("Need(%q) skipped with %q, want a skip containing %q", tt.bins, r.skipped, tt.wantSkipped)
			case tt.wantFailed != "" && !strings.Contains(r.failed, tt.wantFailed):
				t.Errorf("Need(%q) failed with %q, want a failure containing %q", tt.bins, r.failed, tt.wantFailed)
			}
		})
	}
}

func TestPackageFor(t *testing.T) {
	tests := []struct{ bin, want string }{
		{"dovecot", "dovecot-imapd"},
		{"pebble-challtestsrv", "pebble"},
		{"nginx", "nginx-light libnginx-mod-mail"},
		{"imapgw-no-such-binary", "imapgw-no-such-binary"},
	}
	for _, tt := range tests {
		if got := packageFor(tt.bin); got != tt.want {
			t.Errorf("packageFor(%q) = %q, want %q", tt.bin, got, tt.want)
		}
	}
}

func TestPath(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "tool")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	if got := Path("tool"); got != bin {
		t.Errorf("Path(tool) = %q, want %q", got, bin)
	}
	if got := Path("imapgw-no-such-binary"); got != "" {
		t.Errorf("Path(imapgw-no-such-binary) = %q, want empty", got)
	}
	// Outside PATH but in /usr/sbin, which non-root PATHs often lack: found anyway.
	if _, err := os.Stat("/usr/sbin/dovecot"); err == nil {
		if got := Path("dovecot"); got != "/usr/sbin/dovecot" {
			t.Errorf("Path(dovecot) with PATH=%s = %q, want /usr/sbin/dovecot", dir, got)
		}
	}
}
