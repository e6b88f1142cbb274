package testbed

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// packages names the Debian package that provides each binary a test may need.
var packages = map[string]string{
	"dovecot":             "dovecot-imapd",
	"pebble":              "pebble",
	"pebble-challtestsrv": "pebble",
	"haproxy":             "haproxy",
	"nginx":               "nginx-light libnginx-mod-mail",
	"python3":             "python3",
	"curl":                "curl",
	"nft":                 "nftables",
	"setpriv":             "util-linux",
	"redis-server":        "redis-server",
	"chromium":            "chromium",
	"promtool":            "prometheus",
	"systemd-analyze":     "systemd",
	"man":                 "man-db",
}

// sbinDirs are searched after PATH: a non-root PATH often lacks /usr/sbin, where
// Debian puts dovecot and haproxy.
var sbinDirs = []string{"/usr/sbin", "/usr/bin"}

// Path returns the absolute path of the executable bin, looked up in PATH and then
// in /usr/sbin and /usr/bin, or "" when it is not installed.
func Path(bin string) string {
	if p, err := exec.LookPath(bin); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
		return p
	}
	for _, dir := range sbinDirs {
		p := filepath.Join(dir, bin)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// Need stops the test unless every binary in bins is installed. In CI (env CI=true)
// a missing binary fails the test, so a broken CI image cannot pass by skipping;
// elsewhere the test is skipped with a message naming the package to install.
func Need(t testing.TB, bins ...string) {
	t.Helper()
	for _, bin := range bins {
		if Path(bin) != "" {
			continue
		}
		pkg := packageFor(bin)
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI: %s is missing: run scripts/deps.sh (Debian package %s)", bin, pkg)
		}
		t.Skipf("!!! SKIPPED: %s is not installed: this test runs the real %s. "+
			"Install it with `apt-get install %s` or run scripts/deps.sh as root !!!", bin, bin, pkg)
	}
}

// packageFor names the Debian package to install for bin; by default, bin itself.
func packageFor(bin string) string {
	if pkg, ok := packages[bin]; ok {
		return pkg
	}
	return bin
}
