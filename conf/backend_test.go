package conf

import (
	"strings"
	"testing"
	"time"
)

func TestBackendPoolDefaults(t *testing.T) {
	c, err := Parse("t.toml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	b := c.Backend
	if b.Route != RouteUser || b.Affinity.Duration != 15*time.Minute || b.CheckInterval.Duration != 5*time.Second ||
		b.CheckTimeout.Duration != 3*time.Second || b.Fall != 2 || b.Rise != 2 || b.MapFile != "" {
		t.Errorf("backend = %+v, want the pool defaults", b)
	}
	if l := b.ServerList(); len(l) != 1 || l[0] != (BackendServer{Name: "127.0.0.1:143", Address: "127.0.0.1:143", Weight: 100}) {
		t.Errorf("ServerList() = %+v", l)
	}
}

func TestBackendLongForm(t *testing.T) {
	c, err := Parse("t.toml", []byte(minimal+`
[backend]
tls = "starttls"
route = "first"
affinity = "0s"
map_file = "/etc/imapgw/users.map"
fall = 3

[[backend.server]]
name = "imap1"
address = "10.0.0.1:143"

[[backend.server]]
name = "imap3"
address = "10.0.0.3:993"
weight = 200
tls = "implicit"
tls_server_name = "imap3.internal"
tls_skip_verify = true
client_ip = "proxy-v2"
`))
	if err != nil {
		t.Fatal(err)
	}
	b := c.Backend
	if len(b.Servers) != 0 || len(b.Server) != 2 || b.Route != RouteFirst || b.Affinity.Duration != 0 || b.Fall != 3 {
		t.Fatalf("backend = %+v", b)
	}
	if s := b.Server[0]; s.Weight != DefaultWeight || s.TLS != "" || s.TLSSkipVerify != nil {
		t.Errorf("server 1 = %+v, want weight 100 and the rest inherited", s)
	}
	if s := b.Server[1]; s.Weight != 200 || s.TLS != TLSImplicit || s.TLSServerName != "imap3.internal" || s.TLSSkipVerify == nil || !*s.TLSSkipVerify || s.ClientIP != ClientIPProxyV2 {
		t.Errorf("server 2 = %+v", s)
	}
	if l := b.ServerList(); len(l) != 2 || l[1].Name != "imap3" {
		t.Errorf("ServerList() = %+v", l)
	}
}

func TestBackendErrors(t *testing.T) {
	tests := []struct{ src, want string }{
		{"[backend]\nservers = [\"a:1\"]\n[[backend.server]]\nname = \"x\"\naddress = \"b:1\"\n", "t.toml:11: backend.servers: set either backend.servers or [[backend.server]]"},
		{"[backend]\nservers = []\n", "backend.servers: at least one server is required"},
		{"[backend]\nservers = [\"a:1\", \"a:1\"]\n", `"a:1" is listed twice`},
		{"[[backend.server]]\naddress = \"b:1\"\n", `t.toml:10: backend.server[1].name: "" is not a server name`},
		{"[[backend.server]]\nname = \"x y\"\naddress = \"b:1\"\n", `backend.server[1].name: "x y" is not a server name`},
		{"[[backend.server]]\nname = \"x\"\naddress = \"b:1\"\n[[backend.server]]\nname = \"x\"\naddress = \"c:1\"\n", `t.toml:14: backend.server[2].name: "x" is used twice`},
		{"[[backend.server]]\nname = \"x\"\naddress = \"b\"\n", `t.toml:12: backend.server[1].address: "b" is not host:port`},
		{"[[backend.server]]\nname = \"x\"\naddress = \"b:1\"\nweight = 0\n", "t.toml:13: backend.server[1].weight: must be positive, got 0"},
		{"[[backend.server]]\nname = \"x\"\naddress = \"b:1\"\ntls = \"ssl\"\n", `backend.server[1].tls: "ssl" is not one of`},
		{"[[backend.server]]\nname = \"x\"\naddress = \"b:1\"\nclient_ip = \"x\"\n", `backend.server[1].client_ip: "x" is not one of`},
		{"[[backend.server]]\nname = \"x\"\naddress = \"b:1\"\ntls = \"none\"\ntls_server_name = \"n\"\n", `backend.server[1].tls: is "none", yet TLS settings`},
		{"[[backend.server]]\nname = \"x\"\naddress = \"b:1\"\nport = 3\n", "t.toml:13: backend.server.port: unknown key"},
		{"[backend]\nroute = \"random\"\n", `backend.route: "random" is not one of user, first`},
		{"[backend]\ncheck_interval = \"0s\"\n", "backend.check_interval: must be a positive duration"},
		{"[backend]\ncheck_timeout = \"0s\"\n", "backend.check_timeout: must be a positive duration"},
		{"[backend]\nfall = 0\n", "backend.fall: must be positive"},
		{"[backend]\nrise = -1\n", "backend.rise: must be positive"},
		{"[backend]\nwarm_connections = -1\n", "backend.warm_connections: must be between 0 and 64, got -1"},
		{"[backend]\nwarm_connections = 65\n", "backend.warm_connections: must be between 0 and 64, got 65"},
		{"[backend]\naffinity = \"-1m\"\n", "negative duration"},
	}
	// Lines count from the file's start: minimal is 9 lines.
	for _, tc := range tests {
		_, err := Parse("t.toml", []byte(minimal+tc.src))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want %q", tc.src, err, tc.want)
		}
	}
	// A server's own TLS mode makes the [backend] TLS keys meaningful.
	if _, err := Parse("t.toml", []byte(minimal+"[backend]\ntls_ca_file = \"/ca.pem\"\n[[backend.server]]\nname = \"x\"\naddress = \"b:1\"\ntls = \"starttls\"\n")); err != nil {
		t.Errorf("per-server TLS with [backend] tls_ca_file: %v", err)
	}
}
