package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/imapgw/imapgw/admin"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/limiter"
)

// TestAdminRoutes calls every route of the admin API over HTTP against a
// running gateway with a session logged in, with and without the token.
func TestAdminRoutes(t *testing.T) {
	be := startDemoBackend(t)
	env := startAdminEnv(t, adminTestConfig(t, be.Addr), "")
	env.login(t)

	tests := []struct {
		method, path, body string
		public             bool
		want               int
		check              func(t *testing.T, body string)
	}{
		{"GET", "/healthz", "", true, 200, wantJSONField("status", "ok")},
		{"GET", "/readyz", "", true, 200, wantJSONField("status", "ready")},
		{"GET", "/metrics", "", false, 200, func(t *testing.T, body string) {
			if !strings.Contains(body, "imapgw_sessions{") {
				t.Errorf("GET /metrics: no imapgw_sessions in\n%s", body)
			}
		}},
		{"GET", "/api/v1/sessions", "", false, 200, func(t *testing.T, body string) {
			var list []admin.SessionInfo
			decode(t, body, &list)
			if len(list) != 1 || list[0].User != "demo" || list[0].State != "relaying" || list[0].Backend == "" {
				t.Errorf("GET /api/v1/sessions = %s, want one relaying session of demo", body)
			}
		}},
		{"GET", "/api/v1/sources/127.0.0.1", "", false, 200, func(t *testing.T, body string) {
			var in limiter.SourceInfo
			decode(t, body, &in)
			if in.Connections != 1 || in.Allowed {
				t.Errorf("GET /api/v1/sources/127.0.0.1 = %s, want 1 connection, not allowed", body)
			}
		}},
		{"GET", "/api/v1/sources/192.0.2.99", "", false, 404, wantError},
		{"POST", "/api/v1/bans", `{"ip": "192.0.2.99", "duration": "1h", "reason": "route test"}`, false, 201, func(t *testing.T, body string) {
			var b limiter.Ban
			decode(t, body, &b)
			if b.Prefix.String() != "192.0.2.99/32" || b.Reason != "route test" || b.Source != limiter.SourceManual {
				t.Errorf("POST /api/v1/bans = %s, want a manual ban of 192.0.2.99/32", body)
			}
		}},
		{"POST", "/api/v1/bans", `{"ip": "192.0.2.99", "duration": "forever"}`, false, 400, wantError},
		{"GET", "/api/v1/bans", "", false, 200, func(t *testing.T, body string) {
			var list []limiter.Ban
			decode(t, body, &list)
			if len(list) != 1 || list[0].Prefix.String() != "192.0.2.99/32" {
				t.Errorf("GET /api/v1/bans = %s, want the ban of 192.0.2.99/32", body)
			}
		}},
		{"GET", "/api/v1/sources/192.0.2.99", "", false, 200, func(t *testing.T, body string) {
			var in limiter.SourceInfo
			decode(t, body, &in)
			if in.Ban == nil {
				t.Errorf("GET /api/v1/sources/192.0.2.99 = %s, want its ban", body)
			}
		}},
		{"DELETE", "/api/v1/bans/192.0.2.99", "", false, 200, wantJSONField("status", "lifted")},
		{"DELETE", "/api/v1/bans/192.0.2.99", "", false, 404, wantError},
		{"GET", "/api/v1/stats", "", false, 200, func(t *testing.T, body string) {
			var st admin.Stats
			decode(t, body, &st)
			if st.Logins["ok"] != 1 || st.Sessions["relaying"] != 1 || !st.Ready || len(st.Certificates) != 1 {
				t.Errorf("GET /api/v1/stats = %s, want 1 login ok, 1 relaying session, ready, 1 certificate", body)
			}
		}},
		// Started without a file (as `imapgw demo`): nothing to reload.
		{"POST", "/api/v1/reload", "", false, 500, wantError},
		{"PATCH", "/api/v1/bans", "", false, 405, wantError},
	}
	for _, tt := range tests {
		code, body := env.call(t, tt.method, tt.path, true, tt.body)
		if code != tt.want {
			t.Errorf("%s %s = %d %s, want %d", tt.method, tt.path, code, body, tt.want)
		} else {
			tt.check(t, body)
		}
		if tt.public {
			continue
		}
		if code, body := env.call(t, tt.method, tt.path, false, tt.body); code != 401 {
			t.Errorf("%s %s without the token = %d %s, want 401", tt.method, tt.path, code, body)
		}
	}
}

func wantJSONField(key, want string) func(*testing.T, string) {
	return func(t *testing.T, body string) {
		t.Helper()
		var m map[string]any
		decode(t, body, &m)
		if m[key] != want {
			t.Errorf("body %s: %s = %v, want %q", body, key, m[key], want)
		}
	}
}

func wantError(t *testing.T, body string) {
	t.Helper()
	var e struct{ Error string }
	decode(t, body, &e)
	if e.Error == "" {
		t.Errorf("body %s: want {\"error\": …}", body)
	}
}

// TestManualBanAtAccept: a ban made over the API refuses new connections from
// that address before any TLS byte; lifting it admits them again; `imapgw
// bans list` shows both states.
func TestManualBanAtAccept(t *testing.T) {
	be := startDemoBackend(t)
	env := startAdminEnv(t, adminTestConfig(t, be.Addr), "")
	const ip = "127.0.0.9"

	if err := env.handshakeFrom(ip); err != nil {
		t.Fatalf("TLS handshake from %s before any ban = %v", ip, err)
	}
	code, body := env.call(t, "POST", "/api/v1/bans", true, `{"ip": "`+ip+`", "duration": "1h", "reason": "test ban"}`)
	if code != 201 {
		t.Fatalf("POST /api/v1/bans = %d %s, want 201", code, body)
	}
	if err := env.handshakeFrom(ip); err == nil {
		t.Fatalf("TLS handshake from banned %s succeeded, want the connection closed at accept", ip)
	}
	if err := env.handshakeFrom("127.0.0.10"); err != nil {
		t.Errorf("TLS handshake from 127.0.0.10 (not banned) = %v", err)
	}
	if n, _ := sample(env.scrape(t), "imapgw_connections_total", "outcome", "refused_ban"); n != 1 {
		t.Errorf("imapgw_connections_total{outcome=refused_ban} = %v, want 1", n)
	}

	rc, out, errOut := env.cli("bans", "list")
	if rc != 0 || !strings.Contains(out, ip+"/32") || !strings.Contains(out, "test ban") || !strings.Contains(out, "manual") {
		t.Fatalf("imapgw bans list = %d\n%s%s\nwant the ban of %s/32", rc, out, errOut, ip)
	}

	if rc, out, errOut := env.cli("bans", "del", ip); rc != 0 || !strings.Contains(out, "lifted") {
		t.Fatalf("imapgw bans del %s = %d %s%s, want 0 and lifted", ip, rc, out, errOut)
	}
	if err := env.handshakeFrom(ip); err != nil {
		t.Errorf("TLS handshake from %s after the ban was lifted = %v", ip, err)
	}
	rc, out, errOut = env.cli("bans", "list")
	if rc != 0 || strings.Contains(out, ip) || !strings.Contains(out, "no active bans") {
		t.Errorf("imapgw bans list after lifting = %d\n%s%s\nwant no active bans", rc, out, errOut)
	}
}

// TestMetricsMove scrapes /metrics with the Prometheus text parser and checks
// that the series issue 5 names exist and move as sessions log in, fail and
// end.
func TestMetricsMove(t *testing.T) {
	be := startDemoBackend(t)
	env := startAdminEnv(t, adminTestConfig(t, be.Addr), "")

	before := env.scrape(t) // a series missing before any connection counts as 0
	c := env.login(t)
	bad := env.dial(t)
	if err := bad.Login("demo", "wrong").Wait(); err == nil {
		t.Fatal("LOGIN demo with a wrong password succeeded")
	}
	bad.Close()
	env.call(t, "POST", "/api/v1/bans", true, `{"ip": "192.0.2.5"}`)

	// Relayed bytes are counted just after they are written: poll until the
	// counters have caught up with what the clients saw.
	var during map[string]*dto.MetricFamily
	var problems []string
	eventually(t, "the metrics to move", func() bool {
		during = env.scrape(t)
		problems = metricMoves(before, during)
		return len(problems) == 0
	}, func() {
		for _, p := range problems {
			t.Error(p)
		}
	})
	if exp, ok := sample(during, "imapgw_certificate_expiry_timestamp_seconds", "name", "localhost"); !ok || exp < float64(time.Now().Unix()) {
		t.Errorf("imapgw_certificate_expiry_timestamp_seconds{name=localhost} = %v (present %v), want a future time", exp, ok)
	}

	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	eventually(t, "imapgw_sessions back to 0 in both states", func() bool {
		fams := env.scrape(t)
		relaying, ok1 := sample(fams, "imapgw_sessions", "state", "relaying")
		preauth, ok2 := sample(fams, "imapgw_sessions", "state", "preauth")
		return ok1 && ok2 && relaying == 0 && preauth == 0
	}, nil)
}

// metricMoves compares two scrapes around one login, one failed login and
// one manual ban, and describes each series that is missing or did not move
// as it should.
func metricMoves(before, during map[string]*dto.MetricFamily) []string {
	var problems []string
	for _, name := range []string{
		"imapgw_connections_total", "imapgw_sessions", "imapgw_logins_total", "imapgw_bans",
		"imapgw_bans_total", "imapgw_relay_bytes_total", "imapgw_backend_dial_seconds",
		"imapgw_login_seconds", "imapgw_certificate_expiry_timestamp_seconds", "imapgw_panics_total",
		"go_goroutines", "process_start_time_seconds",
	} {
		if during[name] == nil {
			problems = append(problems, "/metrics has no "+name)
		}
	}
	moves := []struct {
		name   string
		labels []string
		delta  float64
	}{
		{"imapgw_connections_total", []string{"outcome", "accepted"}, 2},
		{"imapgw_logins_total", []string{"outcome", "ok"}, 1},
		{"imapgw_logins_total", []string{"outcome", "failed"}, 1},
		{"imapgw_sessions", []string{"state", "relaying"}, 1},
		{"imapgw_backend_dial_seconds", nil, 2},
		{"imapgw_login_seconds", nil, 2},
		{"imapgw_bans", nil, 1},
		{"imapgw_bans_total", []string{"reason", "manual"}, 1},
		{"imapgw_panics_total", nil, 0},
	}
	for _, m := range moves {
		b, _ := sample(before, m.name, m.labels...)
		d, ok := sample(during, m.name, m.labels...)
		if !ok || d-b != m.delta {
			problems = append(problems, fmt.Sprintf("%s%v moved by %v (present %v), want %v", m.name, m.labels, d-b, ok, m.delta))
		}
	}
	for _, dir := range []string{"client_to_backend", "backend_to_client"} {
		if v, _ := sample(during, "imapgw_relay_bytes_total", "direction", dir); v <= 0 {
			problems = append(problems, fmt.Sprintf("imapgw_relay_bytes_total{direction=%s} = %v after a NOOP, want > 0", dir, v))
		}
	}
	return problems
}

// TestReloadKeepsSessions: POST /api/v1/reload applies a new connection_rate
// while an IDLE session opened before stays up; an invalid file is answered
// with its reason and the running configuration stays.
func TestReloadKeepsSessions(t *testing.T) {
	be := startDemoBackend(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "imapgw.toml")
	writeConfig(t, path, dir, be.Addr, "connection_rate = 20")
	cfg, err := conf.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	env := startAdminEnv(t, cfg, path)

	c := env.login(t)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatalf("IDLE: %v", err)
	}

	// One token a minute: a source gets one connection, then waits.
	writeConfig(t, path, dir, be.Addr, "connection_rate = 0.0167")
	code, body := env.call(t, "POST", "/api/v1/reload", true, "")
	if code != 200 || !strings.Contains(body, `"reloaded"`) {
		t.Fatalf("POST /api/v1/reload = %d %s, want 200 reloaded", code, body)
	}
	if err := env.handshakeFrom("127.0.0.7"); err != nil {
		t.Errorf("first connection after the reload = %v, want admitted", err)
	}
	if err := env.handshakeFrom("127.0.0.7"); err == nil {
		t.Errorf("second connection within a second after connection_rate = 0.0167 was admitted")
	}
	if n, _ := sample(env.scrape(t), "imapgw_connections_total", "outcome", "refused_rate"); n != 1 {
		t.Errorf("imapgw_connections_total{outcome=refused_rate} = %v, want 1", n)
	}

	writeConfig(t, path, dir, be.Addr, "connection_rate = -1")
	code, body = env.call(t, "POST", "/api/v1/reload", true, "")
	if code != 400 || !strings.Contains(body, "limits.connection_rate") || !strings.Contains(body, path) {
		t.Errorf("POST /api/v1/reload with an invalid file = %d %s, want 400 naming the file and key", code, body)
	}
	env.g.mu.Lock()
	rate := env.g.cfg.Limits.ConnectionRate
	env.g.mu.Unlock()
	if rate != 0.0167 {
		t.Errorf("connection_rate after a rejected reload = %v, want 0.0167 (the running one)", rate)
	}

	if err := idle.Close(); err != nil {
		t.Fatalf("ending IDLE: %v", err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatalf("IDLE after two reloads: %v", err)
	}
	if err := c.Noop().Wait(); err != nil {
		t.Errorf("NOOP after two reloads: %v", err)
	}
}

// writeConfig writes a gateway config for the test's backend, with limits
// holding the [limits] line under test.
func writeConfig(t *testing.T, path, stateDir, backend, limits string) {
	t.Helper()
	text := fmt.Sprintf(`[server]
hostname = "localhost"
state_dir = %q
drain_timeout = "1s"

[[listen]]
address = "127.0.0.1:0"
tls = "implicit"

[tls]
certificate = "self-signed"
names = ["127.0.0.1"]

[backend]
servers = [%q]
client_ip = "none"

[limits]
%s

[bans]
allow = ["::1/128"]
failure_delay = "0s"

[admin]
address = ""
`, filepath.Join(stateDir, "state"), backend, limits)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestBansCLI drives `imapgw bans` through add, list (table and JSON), del,
// its errors and the config file as the source of address and token.
func TestBansCLI(t *testing.T) {
	be := startDemoBackend(t)
	env := startAdminEnv(t, adminTestConfig(t, be.Addr), "")

	rc, out, errOut := env.cli("bans", "add", "192.0.2.44", "-for", "2h", "-reason", "from the cli")
	if rc != 0 || !strings.Contains(out, "banned 192.0.2.44/32") {
		t.Fatalf("imapgw bans add = %d %s%s, want 0 and the ban", rc, out, errOut)
	}
	rc, out, errOut = env.cli("bans", "list", "-json")
	var bans []limiter.Ban
	if rc != 0 || json.Unmarshal([]byte(out), &bans) != nil || len(bans) != 1 {
		t.Fatalf("imapgw bans list -json = %d %s%s, want one ban as JSON", rc, out, errOut)
	}
	if b := bans[0]; b.Reason != "from the cli" || b.Until.Sub(b.Since) != 2*time.Hour {
		t.Errorf("imapgw bans list -json = %+v, want reason %q for 2h", b, "from the cli")
	}

	// The config file supplies the address and the token.
	cfgPath := filepath.Join(t.TempDir(), "imapgw.toml")
	writeConfig(t, cfgPath, t.TempDir(), be.Addr, "")
	appendAdmin(t, cfgPath, env.addr, env.tokenFile)
	var stdout, stderr strings.Builder
	if rc := run([]string{"bans", "list", "-config", cfgPath}, &stdout, &stderr); rc != 0 || !strings.Contains(stdout.String(), "192.0.2.44/32") {
		t.Errorf("imapgw bans list -config = %d %s%s, want the ban", rc, stdout.String(), stderr.String())
	}

	if rc, out, errOut := env.cli("bans", "del", "192.0.2.44"); rc != 0 {
		t.Errorf("imapgw bans del = %d %s%s, want 0", rc, out, errOut)
	}
	if rc, _, errOut := env.cli("bans", "del", "192.0.2.44"); rc != 1 || !strings.Contains(errOut, "no active ban") {
		t.Errorf("imapgw bans del of no ban = %d %s, want 1 and the reason", rc, errOut)
	}

	usage := []struct {
		args []string
		want int
	}{
		{[]string{"bans"}, 2},
		{[]string{"bans", "frob"}, 2},
		{[]string{"bans", "add"}, 2},
		{[]string{"bans", "add", "192.0.2.1", "192.0.2.2"}, 2},
		{[]string{"bans", "list", "-nope"}, 2},
		{[]string{"bans", "add", "nope"}, 1},
		{[]string{"status", "extra"}, 2},
	}
	for _, u := range usage {
		if rc, _, _ := env.cli(u.args...); rc != u.want {
			t.Errorf("imapgw %s = %d, want %d", strings.Join(u.args, " "), rc, u.want)
		}
	}
	stderr.Reset()
	if rc := run([]string{"bans", "list", "-admin", env.addr}, &stdout, &stderr); rc != 1 || !strings.Contains(stderr.String(), "401") {
		t.Errorf("imapgw bans list without the token = %d %s, want 1 and HTTP 401", rc, stderr.String())
	}
}

// appendAdmin points the [admin] table of the file at addr and tokenFile.
func appendAdmin(t *testing.T, path, addr, tokenFile string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(data), `address = ""`, fmt.Sprintf("address = %q\ntoken_file = %q", addr, tokenFile), 1)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestStatusCLI prints the status of a gateway with one session, as a table
// and as JSON.
func TestStatusCLI(t *testing.T) {
	be := startDemoBackend(t)
	env := startAdminEnv(t, adminTestConfig(t, be.Addr), "")
	env.login(t)

	rc, out, errOut := env.cli("status")
	if rc != 0 {
		t.Fatalf("imapgw status = %d %s", rc, errOut)
	}
	for _, want := range []string{"ready", "relaying 1", "ok 1", "localhost", "self-signed", "demo", "BACKEND", be.Addr, "cluster        off (single node)"} {
		if !strings.Contains(out, want) {
			t.Errorf("imapgw status: no %q in\n%s", want, out)
		}
	}
	rc, out, errOut = env.cli("status", "-json")
	var st struct {
		Stats    admin.Stats
		Backends []admin.BackendInfo
		Sessions []admin.SessionInfo
	}
	if rc != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("imapgw status -json = %d %s%s, want JSON", rc, out, errOut)
	}
	if st.Stats.Logins["ok"] != 1 || len(st.Sessions) != 1 || st.Sessions[0].User != "demo" {
		t.Errorf("imapgw status -json = %s, want 1 login and demo's session", out)
	}
	if len(st.Backends) != 1 || st.Backends[0].Address != be.Addr {
		t.Errorf("imapgw status -json = %s, want the one backend server %s", out, be.Addr)
	}
}

// TestStartAdmin covers the wiring's refusals: no endpoint when
// admin.address is "", an empty token file, a public address without a token.
func TestStartAdmin(t *testing.T) {
	be := startDemoBackend(t)
	env := startAdminEnv(t, adminTestConfig(t, be.Addr), "")
	if s, err := env.g.startAdmin(); s != nil || err != nil {
		t.Errorf("startAdmin() with admin.address \"\" = %v, %v; want nil, nil", s, err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []conf.Admin{
		{Address: "127.0.0.1:0", TokenFile: empty},
		{Address: "127.0.0.1:0", TokenFile: filepath.Join(t.TempDir(), "missing")},
		{Address: "0.0.0.0:0"},
	}
	for _, a := range tests {
		if _, err := env.g.newAdmin(a); err == nil {
			t.Errorf("newAdmin(%+v) = nil error, want a refusal", a)
		}
	}
}

func TestFmtDuration(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want string
	}{
		{0, "0s"},
		{1500 * time.Millisecond, "2s"},
		{90 * time.Minute, "1h30m0s"},
		{47 * time.Hour, "47h0m0s"},
		{48 * time.Hour, "2d0h"},
		{89*24*time.Hour + 5*time.Hour + 7*time.Minute, "89d5h"},
		{-time.Second, "expired"},
	}
	for _, tt := range tests {
		if got := fmtDuration(tt.in); got != tt.want {
			t.Errorf("fmtDuration(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFmtCounts(t *testing.T) {
	tests := []struct {
		in   map[string]uint64
		want string
	}{
		{nil, "-"},
		{map[string]uint64{"ok": 3}, "ok 3"},
		{map[string]uint64{"ok": 3, "failed": 1, "error": 0}, "error 0  failed 1  ok 3"},
	}
	for _, tt := range tests {
		if got := fmtCounts(tt.in); got != tt.want {
			t.Errorf("fmtCounts(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
