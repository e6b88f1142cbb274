package conf

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const minimal = `
[server]
hostname = "mail.example.com"

[[listen]]
address = ":993"

[tls]
certificate = "self-signed"
`

func TestParseDefaults(t *testing.T) {
	c, err := Parse("t.toml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	if c.Listen[0].TLS != TLSImplicit {
		t.Errorf("listen tls = %q, want %q", c.Listen[0].TLS, TLSImplicit)
	}
	if c.Limits != want.Limits {
		t.Errorf("limits = %+v, want the defaults %+v", c.Limits, want.Limits)
	}
	if c.Bans.Ban.Duration != 15*time.Minute || len(c.Bans.Allow) != 2 {
		t.Errorf("bans = %+v, want the defaults", c.Bans)
	}
	if c.Admin.TLS != TLSNone || len(c.Admin.Names) != 0 {
		t.Errorf("admin = %+v, want tls none and no names", c.Admin)
	}
	if c.Backend.ClientIP != ClientIPID || c.Backend.ConnectTimeout.Duration != 5*time.Second || c.Backend.LoginTimeout.Duration != 30*time.Second {
		t.Errorf("backend = %+v, want the defaults", c.Backend)
	}
}

func TestParseValues(t *testing.T) {
	src := minimal + `
[backend]
servers = ["10.0.0.5:143"]
tls = "starttls"
tls_server_name = "imap.internal"
client_ip = "proxy-v2"
connect_timeout = "2s"
login_timeout = "45s"

[bans]
allow = ["192.0.2.0/24"]
ban = "1h"
max_ban = "24h"

[limits]
max_line = 4096

[admin]
address = "127.0.0.1:9000"
names = ["gw.example.com", "2001:db8::1", "192.0.2.1"]
tls = "files"
cert_file = "/etc/imapgw/admin.pem"
key_file = "/etc/imapgw/admin.key"
ca_file = "/etc/imapgw/admin-ca.pem"
`
	c, err := Parse("t.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Bans.Allow; len(got) != 1 || got[0] != netip.MustParsePrefix("192.0.2.0/24") {
		t.Errorf("bans.allow = %v, want [192.0.2.0/24] (replacing the default)", got)
	}
	if c.Backend.TLS != TLSStartTLS || c.Backend.ClientIP != ClientIPProxyV2 || c.Backend.ConnectTimeout.Duration != 2*time.Second || c.Backend.LoginTimeout.Duration != 45*time.Second {
		t.Errorf("backend = %+v", c.Backend)
	}
	if c.Limits.MaxLine != 4096 || c.Admin.Address != "127.0.0.1:9000" {
		t.Errorf("limits.max_line = %d, admin.address = %q", c.Limits.MaxLine, c.Admin.Address)
	}
	if a := c.Admin; len(a.Names) != 3 || a.TLS != CertFiles || a.CertFile == "" || a.KeyFile == "" || a.CAFile == "" {
		t.Errorf("admin = %+v, want three names and TLS from files", a)
	}
}

// TestParseErrors: every error names the file, the line and the key.
func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, src, want string
	}{
		{"unknown key", minimal + "[limits]\nmax_lines = 5\n", "t.toml:11: limits.max_lines: unknown key"},
		{"unknown key in a listener", "[[listen]]\naddress = \":993\"\nadress = \"x\"\n[tls]\ncertificate = \"self-signed\"\n", "t.toml:3: listen.adress: unknown key"},
		{"bad duration", minimal + "[limits]\nidle_timeout = \"31 minutes\"\n", "t.toml:11: limits.idle_timeout: bad duration"},
		{"bad CIDR", minimal + "[bans]\nallow = [\"10.0.0.0/33\"]\n", "t.toml:11: bans.allow"},
		{"bad address", "[[listen]]\naddress = \"993\"\n[tls]\ncertificate = \"self-signed\"\n", "t.toml:2: listen[1].address: \"993\" is not host:port"},
		{"bad tls mode", minimal + "[[listen]]\naddress = \":143\"\ntls = \"startls\"\n", "t.toml:12: listen[2].tls: \"startls\" is not one of implicit, starttls"},
		{"duplicate listener", minimal + "[[listen]]\naddress = \":993\"\n", "t.toml:11: listen[2].address: \":993\" is listed twice"},
		{"no listener", "[tls]\ncertificate = \"self-signed\"\n", "t.toml: listen: at least one"},
		{"acme without email", "[[listen]]\naddress = \":993\"\n", "t.toml: acme.email: an email address is required"},
		{"files without paths", "[[listen]]\naddress = \":993\"\n[tls]\ncertificate = \"files\"\n", "t.toml:4: tls.certificate: \"files\" needs"},
		{"max_ban below ban", minimal + "[bans]\nban = \"2h\"\nmax_ban = \"1h\"\n", "t.toml:12: bans.max_ban"},
		{"bad account_key", minimal + "[bans]\naccount_key = \"email\"\n", "t.toml:11: bans.account_key: \"email\" is not one of user, local-part, strip-realm"},
		{"prefix out of range", minimal + "[bans]\nsource_prefix_v6 = 129\n", "t.toml:11: bans.source_prefix_v6: must be 16 to 128"},
		{"admin not loopback without token", minimal + "[admin]\naddress = \"0.0.0.0:9993\"\n", "t.toml:11: admin.address: \"0.0.0.0:9993\" is not loopback"},
		{"admin name with a port", minimal + "[admin]\nnames = [\"gw.example:9993\"]\n", "t.toml:11: admin.names: \"gw.example:9993\" is not a host name"},
		{"admin name empty", minimal + "[admin]\nnames = [\"\"]\n", "t.toml:11: admin.names"},
		{"admin tls mode", minimal + "[admin]\ntls = \"acme\"\n", "t.toml:11: admin.tls: \"acme\" is not one of none, gateway, files"},
		{"admin files without paths", minimal + "[admin]\ntls = \"files\"\ncert_file = \"/c.pem\"\n", "t.toml:11: admin.tls: \"files\" needs admin.cert_file and admin.key_file"},
		{"admin files without files mode", minimal + "[admin]\ntls = \"gateway\"\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n", "t.toml:11: admin.tls: is \"gateway\", yet admin.cert_file"},
		{"admin ca_file without tls", minimal + "[admin]\nca_file = \"/ca.pem\"\n", "t.toml:11: admin.ca_file: is set, yet admin.tls is \"none\""},
		{"wrong type", minimal + "[limits]\nmax_line = \"big\"\n", "t.toml:11: "},
		{"syntax", "[server\n", "t.toml:2: "},
		{"contradiction", minimal + "[backend]\ntls = \"implicit\"\ntls_skip_verify = true\ntls_ca_file = \"/ca.pem\"\n", "backend.tls_skip_verify: contradicts"},
		{"backend tls settings without tls", minimal + "[backend]\ntls_ca_file = \"/ca.pem\"\n", "t.toml:10: backend.tls: is \"none\""},
		{"zero login timeout", minimal + "[backend]\nlogin_timeout = \"0s\"\n", "t.toml:11: backend.login_timeout: must be a positive duration"},
		{"log level", minimal + "[log]\nlevel = \"verbose\"\n", "t.toml:11: log.level"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t.toml", []byte(tc.src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse(%s) = %v, want an error containing %q", tc.name, err, tc.want)
			}
			var errs Errors
			if err != nil && !errors.As(err, &errs) {
				t.Errorf("Parse(%s) error is %T, want conf.Errors", tc.name, err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "imapgw.toml")
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "reading config") {
		t.Errorf("Load(missing) = %v, want a reading error", err)
	}
	os.WriteFile(path, []byte(minimal), 0o644)
	c, err := Load(path)
	if err != nil || c.Path != path {
		t.Fatalf("Load = %v, %v", c, err)
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:9993": true, "[::1]:9993": true, "localhost:1": true,
		"0.0.0.0:9993": false, ":9993": false, "192.0.2.1:1": false, "bad": false,
	} {
		if got := IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}
