package testbed

import (
	"fmt"
	"os"
	"os/user"
	"strings"
	"testing"
	"text/template"
)

// dovecotConf is a complete, standalone configuration: nothing is read from
// /etc/dovecot, so the test sees the same Dovecot on every machine.
var dovecotConf = template.Must(template.New("dovecot.conf").Parse(`# written by internal/testbed
protocols = imap
listen = 127.0.0.1
base_dir = {{.Dir}}/run
state_dir = {{.Dir}}/state
instance_name = {{.Instance}}
# Info lines (Login: user=<…>, rip=…) go to info_log_path, which defaults to log_path.
log_path = {{.Dir}}/dovecot.log
auth_verbose = yes
verbose_proctitle = yes

default_login_user = {{.LoginUser}}
default_internal_user = {{.InternalUser}}
default_internal_group = {{.InternalGroup}}

disable_plaintext_auth = no
{{- if .OAuthConf}}
auth_mechanisms = plain login xoauth2 oauthbearer
{{- else}}
auth_mechanisms = plain login
{{- end}}
auth_failure_delay = {{.FailureDelay}}
# Loopback is trusted: the ID x-originating-ip field is believed. (That does not
# exempt it from the auth penalty, which is keyed on the address believed.)
login_trusted_networks = 127.0.0.0/8
haproxy_trusted_networks = 127.0.0.0/8
mail_max_userip_connections = 10000

mail_location = maildir:~/Maildir
namespace inbox {
  inbox = yes
  separator = /
}

{{- if .NoDelayFrom}}
# Connections from these networks (real_rip: the gateway itself, whatever address
# it forwards) get "nodelay": a failure is answered at once and does not raise
# the auth penalty. continue-fail keeps the field without vouching for the
# password, which the next passdb checks; elsewhere allow_real_nets fails this
# passdb and its fields are dropped.
passdb {
  driver = static
  args = nopassword=y allow_real_nets={{.NoDelayFrom}} nodelay=y
  result_success = continue-fail
  result_failure = continue
}
{{- end}}
{{- if .OAuthConf}}
# OAuth 2.0 tokens, checked by the introspection endpoint named in the file.
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {{.OAuthConf}}
}
{{- end}}
passdb {
  driver = passwd-file
  args = scheme=PLAIN {{.PasswdFile}}
{{- if .OAuthConf}}
  # A token the oauth2 passdb refused is not then tried as a password.
  mechanisms = plain login
{{- end}}
}
userdb {
  driver = static
  args = uid={{.MailUID}} gid={{.MailGID}} home={{.MailRoot}}/%u
}
{{if .TLS}}
ssl = yes
ssl_cert = <{{.CertFile}}
ssl_key = <{{.KeyFile}}
ssl_min_protocol = TLSv1.2
{{else}}
ssl = no
{{end}}
service imap-login {
{{- if not .Root}}
  # chroot needs root.
  chroot =
{{- end}}
  inet_listener imap {
    address = 127.0.0.1
    port = {{.Port}}
  }
  inet_listener imap_haproxy {
    address = 127.0.0.1
    port = {{.ProxyPort}}
    haproxy = yes
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = {{.TLSPort}}
{{- if .TLS}}
    ssl = yes
{{- end}}
  }
}
service anvil {
{{- if not .Root}}
  chroot =
{{- end}}
{{- if .NoPenalty}}
  # The auth process cannot connect to this socket and disables the penalty.
  unix_listener anvil-auth-penalty {
    mode = 0
  }
{{- end}}
}
`))

// dovecotConfData fills dovecotConf.
type dovecotConfData struct {
	Dir, Instance                          string
	MailRoot, PasswdFile                   string // shared by a cluster; below Dir otherwise
	LoginUser, InternalUser, InternalGroup string
	MailUID, MailGID                       string
	FailureDelay                           string
	NoDelayFrom                            string
	Root, TLS, NoPenalty                   bool
	CertFile, KeyFile                      string
	OAuthConf                              string // the oauth2 passdb's settings file; "" without OAuth
	Port, ProxyPort, TLSPort               int
}

// setUsers picks the accounts Dovecot runs as. As root: Debian's dovenull and
// dovecot, and mail owned by nobody. Otherwise Dovecot cannot switch users, so
// everything runs as the current user.
func (d *dovecotConfData) setUsers(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		d.Root = true
		d.LoginUser, d.InternalUser, d.InternalGroup = "dovenull", "dovecot", "dovecot"
		d.MailUID, d.MailGID = "nobody", "nogroup"
		return
	}
	u, err := user.Current()
	if err != nil {
		t.Fatalf("dovecot as non-root needs the current user's name: %v", err)
	}
	g, err := user.LookupGroupId(fmt.Sprint(os.Getegid()))
	if err != nil {
		t.Fatalf("dovecot as non-root needs the current group's name: %v", err)
	}
	d.LoginUser, d.InternalUser, d.InternalGroup = u.Username, u.Username, g.Name
	d.MailUID, d.MailGID = fmt.Sprint(os.Geteuid()), fmt.Sprint(os.Getegid())
}

// passwdFile renders users in passwd-file format with explicit {PLAIN} schemes.
// The format is colon-separated lines, so names and passwords must not contain
// ':' or line breaks.
func passwdFile(t testing.TB, users map[string]string) []byte {
	t.Helper()
	var b strings.Builder
	for name, pass := range users {
		if name == "" || strings.ContainsAny(name, ":\r\n") || strings.ContainsAny(pass, ":\r\n") {
			// The values are test fixtures, but still: name the user, never the password.
			t.Fatalf("dovecot passwd-file cannot hold user %q or its password (no ':' or line breaks, no empty name)", name)
		}
		fmt.Fprintf(&b, "%s:{PLAIN}%s::::::\n", name, pass)
	}
	return []byte(b.String())
}
