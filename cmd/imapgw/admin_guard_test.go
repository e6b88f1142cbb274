package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/imapgw/imapgw/conf"
)

// TestBansAddRefusedCLI: `imapgw bans add` prints the endpoint's reason for a
// ban it refuses (issue 11, point 6) and exits 1; nothing is banned.
func TestBansAddRefusedCLI(t *testing.T) {
	be := startDemoBackend(t)
	env := startAdminEnv(t, adminTestConfig(t, be.Addr), "") // bans.allow = ::1/128
	tests := []struct {
		args  []string
		words []string
	}{
		{[]string{"bans", "add", "::1"}, []string{"HTTP 409", "bans.allow", "would not be enforced"}},
		{[]string{"bans", "add", "192.0.2.5", "-for", "2000000h"}, []string{"HTTP 400", "bans.max_ban"}},
	}
	for _, tt := range tests {
		rc, out, errOut := env.cli(tt.args...)
		if rc != 1 {
			t.Errorf("imapgw %s = %d %s%s, want 1", strings.Join(tt.args, " "), rc, out, errOut)
		}
		for _, w := range tt.words {
			if !strings.Contains(errOut, w) {
				t.Errorf("imapgw %s: stderr %q does not mention %q", strings.Join(tt.args, " "), errOut, w)
			}
		}
	}
	if rc, out, errOut := env.cli("bans", "list"); rc != 0 || !strings.Contains(out, "no active bans") {
		t.Errorf("imapgw bans list after refused bans = %d %s%s, want no active bans", rc, out, errOut)
	}
}

// TestNewAdminTLSFilesMissing: a pair that cannot be loaded stops the start
// with an error naming the keys, instead of an endpoint without TLS.
func TestNewAdminTLSFilesMissing(t *testing.T) {
	be := startDemoBackend(t)
	env := startAdminEnv(t, adminTestConfig(t, be.Addr), "")
	dir := t.TempDir()
	_, err := env.g.newAdmin(conf.Admin{Address: "127.0.0.1:0", TokenFile: env.tokenFile, TLS: conf.CertFiles,
		CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem")})
	if err == nil || !strings.Contains(err.Error(), "admin.cert_file") {
		t.Errorf("newAdmin with missing admin.cert_file = %v, want an error naming it", err)
	}
}
