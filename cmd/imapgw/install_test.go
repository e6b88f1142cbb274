package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

const unitFile = "../../contrib/systemd/imapgw.service"

// unitDirectives reads a unit file into its directives, each with every
// value it is given, and the commented-out directives ("#Key=value") apart.
func unitDirectives(t *testing.T, path string) (set, commented map[string][]string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	set, commented = map[string][]string{}, map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		m := set
		if rest, ok := strings.CutPrefix(line, "#"); ok {
			line, m = rest, commented
		}
		if k, v, ok := strings.Cut(line, "="); ok && !strings.Contains(k, " ") {
			m[k] = append(m[k], v)
		}
	}
	return set, commented
}

// TestUnitFile checks what issue 17 asks of contrib/systemd/imapgw.service,
// then has systemd-analyze verify it (ExecStart pointing at an executable
// that exists, as verify requires).
func TestUnitFile(t *testing.T) {
	set, commented := unitDirectives(t, unitFile)
	want := map[string]string{
		"Type": "notify", "ExecReload": "kill -HUP $MAINPID", "User": "imapgw", "Group": "imapgw",
		"StateDirectory": "imapgw", "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "SystemCallFilter": "@system-service",
		"Documentation": "man:imapgw(8)", "ExecStart": "/usr/local/bin/imapgw run -config /etc/imapgw/imapgw.toml",
	}
	for k, v := range want {
		if got := set[k]; len(got) != 1 || got[0] != v {
			t.Errorf("%s: %s=%q, want %q", unitFile, k, got, v)
		}
	}
	if !strings.Contains(strings.Join(commented["AmbientCapabilities"], " "), "CAP_NET_ADMIN") ||
		!strings.Contains(strings.Join(commented["RestrictAddressFamilies"], " "), "AF_NETLINK") {
		t.Errorf("%s: no commented-out CAP_NET_ADMIN and AF_NETLINK lines for kernel bans", unitFile)
	}
	// Two descriptors per session (client and backend) at max_connections.
	nofile, _ := strconv.Atoi(strings.Join(set["LimitNOFILE"], ""))
	if max := conf.Default().Limits.MaxConnections; nofile < 2*max+1024 {
		t.Errorf("LimitNOFILE=%d, want room for 2×%d sessions' descriptors", nofile, max)
	}
	if len(set["WatchdogSec"]) != 1 {
		t.Errorf("WatchdogSec=%q, want it set (imapgw pings at half of it)", set["WatchdogSec"])
	}

	testbed.Need(t, "systemd-analyze")
	unit := filepath.Join(t.TempDir(), "imapgw.service")
	data, err := os.ReadFile(unitFile)
	must(t, err)
	// The test binary stands in for the binary: verify only checks that
	// ExecStart is executable. TestMakeInstall verifies the installed unit
	// with the real binary and man page.
	data = bytes.Replace(data, []byte("ExecStart=/usr/local/bin/imapgw"), []byte("ExecStart="+os.Args[0]), 1)
	must(t, os.WriteFile(unit, data, 0o644))
	systemdVerify(t, unit, "--man=no")
	// And with the kernel-ban lines switched on.
	data = regexp.MustCompile(`(?m)^#((AmbientCapabilities|CapabilityBoundingSet|RestrictAddressFamilies)=)`).ReplaceAll(data, []byte("$1"))
	must(t, os.WriteFile(unit, data, 0o644))
	systemdVerify(t, unit, "--man=no")
}

// systemdVerify runs systemd-analyze verify on unit and fails on any
// complaint: unknown or misspelled directives are only warnings to it.
func systemdVerify(t *testing.T, unit string, args ...string) {
	t.Helper()
	cmd := exec.Command(testbed.Path("systemd-analyze"), append(append([]string{"verify"}, args...), unit)...)
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
	}
}

// TestMakeInstall runs `make install` into a temporary DESTDIR, twice (an
// edited config survives the second), and checks what it installed with the
// real tools: the binary accepts the installed config, systemd-analyze
// verifies the unit (its man page found where man finds it), man shows
// imapgw(8).
func TestMakeInstall(t *testing.T) {
	testbed.Need(t, "make", "systemd-analyze", "man")
	dest, build := t.TempDir(), t.TempDir()
	bin := filepath.Join(build, "imapgw")
	makeInstall := func(args ...string) {
		t.Helper()
		cmd := exec.Command(testbed.Path("make"), append([]string{"-C", "../..", "install", "DESTDIR=" + dest, "BIN=" + bin}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make install %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	makeInstall()
	at := func(p string) string { return filepath.Join(dest, p) }
	modes := map[string]os.FileMode{
		"/usr/local/bin/imapgw":                           0o755,
		"/usr/local/lib/systemd/system/imapgw.service":    0o644,
		"/usr/local/lib/sysusers.d/imapgw.conf":           0o644,
		"/usr/local/share/man/man8/imapgw.8":              0o644,
		"/usr/local/share/doc/imapgw/imapgw.example.toml": 0o644,
		"/etc/imapgw/imapgw.toml":                         0o644,
	}
	for p, mode := range modes {
		fi, err := os.Stat(at(p))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("installed %s: %v, mode %v, want %v", p, err, fi, mode)
		}
	}

	imapgw := at("/usr/local/bin/imapgw")
	if out, err := exec.Command(imapgw, "check", "-config", at("/etc/imapgw/imapgw.toml")).CombinedOutput(); err != nil {
		t.Errorf("installed imapgw check of the installed config: %v\n%s", err, out)
	}

	// The unit as installed, but for ExecStart's path under DESTDIR: verify
	// finds the binary and, through MANPATH, the man page Documentation= names.
	data, err := os.ReadFile(at("/usr/local/lib/systemd/system/imapgw.service"))
	must(t, err)
	if !bytes.Contains(data, []byte("\nExecStart=/usr/local/bin/imapgw run -config /etc/imapgw/imapgw.toml\n")) {
		t.Errorf("installed unit's ExecStart is not PREFIX's binary")
	}
	unit := filepath.Join(t.TempDir(), "imapgw.service")
	must(t, os.WriteFile(unit, bytes.Replace(data, []byte("ExecStart=/usr/local/bin/imapgw"), []byte("ExecStart="+imapgw), 1), 0o644))
	t.Setenv("MANPATH", at("/usr/local/share/man"))
	systemdVerify(t, unit)

	out, err := exec.Command(testbed.Path("man"), "-P", "cat", "imapgw").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "imapgw bans add") {
		t.Errorf("man imapgw with MANPATH=%s: %v\n%s", os.Getenv("MANPATH"), err, out)
	}

	// A second install keeps the operator's config.
	edited := []byte("# edited by the operator\n")
	must(t, os.WriteFile(at("/etc/imapgw/imapgw.toml"), edited, 0o644))
	makeInstall()
	if got, _ := os.ReadFile(at("/etc/imapgw/imapgw.toml")); !bytes.Equal(got, edited) {
		t.Errorf("make install overwrote /etc/imapgw/imapgw.toml")
	}

	// PREFIX=/usr, as a package would: the unit runs /usr/bin/imapgw.
	makeInstall("PREFIX=/usr")
	data, err = os.ReadFile(at("/usr/lib/systemd/system/imapgw.service"))
	if err != nil || !bytes.Contains(data, []byte("\nExecStart=/usr/bin/imapgw run ")) {
		t.Errorf("PREFIX=/usr: unit %v, want ExecStart=/usr/bin/imapgw", err)
	}
	if _, err := os.Stat(at("/usr/share/man/man8/imapgw.8")); err != nil {
		t.Errorf("PREFIX=/usr: %v", err)
	}
}
