package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imapgw/imapgw/acme"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/limiter"
)

const testToken = "s3cret-token"

// fixture is an admin server on loopback in front of a real limiter.
type fixture struct {
	srv   *Server
	base  string
	lim   *limiter.Limiter
	reg   *prometheus.Registry
	ready atomic.Bool
}

// newFixture starts a server; edit may change the options before New.
func newFixture(t *testing.T, edit func(*Options)) *fixture {
	t.Helper()
	b := conf.Default().Bans
	b.Allow = []netip.Prefix{netip.MustParsePrefix("::1/128")}
	f := &fixture{reg: prometheus.NewRegistry()}
	lim, err := limiter.New(b, conf.Default().Limits, limiter.Options{Registerer: f.reg, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	f.lim = lim
	f.ready.Store(true)
	o := Options{
		Address:  "127.0.0.1:0",
		Token:    testToken,
		Gatherer: f.reg,
		Bans:     lim,
		Ready:    f.ready.Load,
		Logger:   discard(),
	}
	if edit != nil {
		edit(&o)
	}
	f.srv, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.srv.Start(); err != nil {
		t.Fatal(err)
	}
	f.base = "http://" + f.srv.Addr().String()
	t.Cleanup(func() { f.srv.Shutdown(context.Background()) })
	return f
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func (f *fixture) client(t *testing.T, token string) *Client {
	t.Helper()
	c, err := NewClient(f.srv.Addr().String(), token)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// call sends one request and returns the status, the headers and the body.
func (f *fixture) call(t *testing.T, method, path, auth, body string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if changesState(method) {
		req.Header.Set("Content-Type", "application/json") // as the CLI does
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

// errorBody decodes an error answer, failing the test when it is not JSON
// with a non-empty "error".
func errorBody(t *testing.T, body string) apiError {
	t.Helper()
	var e apiError
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
		t.Fatalf("error body %q is not {\"error\": …} (%v)", body, err)
	}
	return e
}

func TestAuth(t *testing.T) {
	f := newFixture(t, nil)
	good := "Bearer " + testToken
	tests := []struct {
		method, path, auth string
		want               int
	}{
		{"GET", "/healthz", "", 200},
		{"GET", "/readyz", "", 200},
		{"GET", "/metrics", "", 401},
		{"GET", "/metrics", good, 200},
		{"GET", "/api/v1/bans", "", 401},
		{"GET", "/api/v1/bans", "Bearer wrong", 401},
		{"GET", "/api/v1/bans", "Bearer " + testToken + "x", 401},
		{"GET", "/api/v1/bans", "Basic " + testToken, 401},
		{"GET", "/api/v1/bans", testToken, 401},
		{"GET", "/api/v1/bans", good, 200},
		{"GET", "/api/v1/bans", "bearer " + testToken, 200},
		{"GET", "/api/v1/sessions", "", 401},
		{"GET", "/api/v1/stats", "", 401},
		{"GET", "/api/v1/sources/192.0.2.1", "", 401},
		{"POST", "/api/v1/bans", "", 401},
		{"DELETE", "/api/v1/bans/192.0.2.1", "", 401},
		{"POST", "/api/v1/reload", "", 401},
		{"PUT", "/api/v1/bans", "", 401}, // no hint of the API to strangers
		{"GET", "/nope", "", 401},
		{"GET", "/debug/pprof/heap", "", 401},
		{"GET", "/debug/pprof/heap", good, 200},
		{"GET", "/debug/pprof/", good, 200},
	}
	for _, tt := range tests {
		code, h, body := f.call(t, tt.method, tt.path, tt.auth, "")
		if code != tt.want {
			t.Errorf("%s %s (Authorization %q) = %d, want %d", tt.method, tt.path, tt.auth, code, tt.want)
			continue
		}
		if code == 401 {
			errorBody(t, body)
			if h.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s: 401 without WWW-Authenticate", tt.method, tt.path)
			}
		}
	}
}

func TestNoTokenOnLoopback(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Token = "" })
	if code, _, body := f.call(t, "GET", "/api/v1/bans", "", ""); code != 200 {
		t.Errorf("GET /api/v1/bans without a configured token = %d %s, want 200", code, body)
	}
}

func TestWrongMethod(t *testing.T) {
	f := newFixture(t, nil)
	auth := "Bearer " + testToken
	tests := []struct {
		method, path, allow string
	}{
		{"POST", "/healthz", "GET, HEAD"},
		{"DELETE", "/readyz", "GET, HEAD"},
		{"POST", "/metrics", "GET, HEAD"},
		{"PUT", "/api/v1/bans", "GET, POST, HEAD"},
		{"GET", "/api/v1/bans/192.0.2.1", "DELETE"},
		{"POST", "/api/v1/sources/192.0.2.1", "GET, HEAD"},
		{"DELETE", "/api/v1/sessions", "GET, HEAD"},
		{"POST", "/api/v1/stats", "GET, HEAD"},
		{"GET", "/api/v1/reload", "POST"},
	}
	for _, tt := range tests {
		code, h, body := f.call(t, tt.method, tt.path, auth, "")
		if code != 405 {
			t.Errorf("%s %s = %d, want 405", tt.method, tt.path, code)
			continue
		}
		errorBody(t, body)
		if got := h.Get("Allow"); got != tt.allow {
			t.Errorf("%s %s: Allow = %q, want %q", tt.method, tt.path, got, tt.allow)
		}
		if got := h.Get("Content-Type"); got != "application/json" {
			t.Errorf("%s %s: Content-Type = %q, want application/json", tt.method, tt.path, got)
		}
	}
}

func TestUnknownRoute(t *testing.T) {
	f := newFixture(t, nil)
	code, _, body := f.call(t, "GET", "/api/v2/bans", "Bearer "+testToken, "")
	if code != 404 {
		t.Fatalf("GET /api/v2/bans = %d, want 404", code)
	}
	errorBody(t, body)
}

func TestAddBanBadInput(t *testing.T) {
	f := newFixture(t, nil)
	tests := []string{
		``,
		`not json`,
		`{}`,
		`{"ip": "nope"}`,
		`{"ip": "192.0.2.0/24"}`,
		`{"ip": "fe80::1%eth0"}`,
		`{"ip": "192.0.2.1", "duration": "soon"}`,
		`{"ip": "192.0.2.1", "duration": "-1h"}`,
		`{"ip": "192.0.2.1", "duration": "0s"}`,
		`{"ip": "192.0.2.1", "durtion": "1h"}`,
		`{"ip": "192.0.2.1", "reason": "two\nlines"}`,
		`{"ip": "192.0.2.1", "reason": "` + strings.Repeat("x", maxReason+1) + `"}`,
		`{"ip": "192.0.2.1"} {"ip": "192.0.2.2"}`,
		`["192.0.2.1"]`,
	}
	for _, body := range tests {
		code, _, out := f.call(t, "POST", "/api/v1/bans", "Bearer "+testToken, body)
		if code != 400 {
			t.Errorf("POST /api/v1/bans %q = %d %s, want 400", body, code, out)
			continue
		}
		errorBody(t, out)
	}
	if n := len(f.lim.Bans()); n != 0 {
		t.Errorf("after bad requests: %d bans, want 0", n)
	}
}

func TestBadAddressInPath(t *testing.T) {
	f := newFixture(t, nil)
	for _, path := range []string{"/api/v1/sources/nope", "/api/v1/sources/", "/api/v1/sources/1.2.3.4.5"} {
		code, _, body := f.call(t, "GET", path, "Bearer "+testToken, "")
		if code != 400 {
			t.Errorf("GET %s = %d, want 400", path, code)
			continue
		}
		errorBody(t, body)
	}
	code, _, _ := f.call(t, "DELETE", "/api/v1/bans/nope", "Bearer "+testToken, "")
	if code != 400 {
		t.Errorf("DELETE /api/v1/bans/nope = %d, want 400", code)
	}
}

func TestBansThroughClient(t *testing.T) {
	f := newFixture(t, nil)
	c := f.client(t, testToken)
	ctx := context.Background()

	b, err := c.AddBan(ctx, "192.0.2.7", 90*time.Minute, "phishing kit")
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParsePrefix("192.0.2.7/32"); b.Prefix != want || b.Reason != "phishing kit" || b.Source != limiter.SourceManual {
		t.Errorf("AddBan = %+v, want prefix %s, reason %q, source manual", b, want, "phishing kit")
	}
	if d := b.Until.Sub(b.Since); d != 90*time.Minute {
		t.Errorf("AddBan(-for 90m): until - since = %v, want 1h30m0s", d)
	}
	list, err := c.Bans(ctx)
	if err != nil || len(list) != 1 || list[0].Prefix != b.Prefix {
		t.Fatalf("Bans() = %+v, %v; want the one ban", list, err)
	}
	in, err := c.Source(ctx, "192.0.2.7")
	if err != nil || in.Ban == nil || in.Ban.Prefix != b.Prefix {
		t.Fatalf("Source(192.0.2.7) = %+v, %v; want its ban", in, err)
	}
	// A prefix as `bans list` prints it names the same source.
	if err := c.LiftBan(ctx, "192.0.2.7/32"); err != nil {
		t.Fatalf("LiftBan(192.0.2.7/32) = %v", err)
	}
	if err := c.LiftBan(ctx, "192.0.2.7"); !IsStatus(err, 404) {
		t.Errorf("LiftBan of a lifted ban = %v, want a 404 APIError", err)
	}
	if _, err := c.Source(ctx, "192.0.2.7"); !IsStatus(err, 404) {
		t.Errorf("Source of a pardoned, idle address = %v, want a 404 APIError", err)
	}
	if in, err := c.Source(ctx, "::1"); err != nil || !in.Allowed {
		t.Errorf("Source(::1) = %+v, %v; want allowed", in, err)
	}
	if _, err := c.AddBan(ctx, "192.0.2.7", 0, ""); err != nil {
		t.Fatalf("AddBan with defaults = %v", err)
	}
	if list, _ := c.Bans(ctx); len(list) != 1 || list[0].Reason != limiter.ReasonManual {
		t.Errorf("Bans() after a default ban = %+v, want one with reason %q", list, limiter.ReasonManual)
	}
}

func TestIPv6PrefixInPath(t *testing.T) {
	f := newFixture(t, nil)
	c := f.client(t, testToken)
	ctx := context.Background()
	b, err := c.AddBan(ctx, "2001:db8::7", time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	// Unescaped, as an operator pastes it from `bans list` into curl.
	code, _, body := f.call(t, "DELETE", "/api/v1/bans/"+b.Prefix.String(), "Bearer "+testToken, "")
	if code != 200 {
		t.Fatalf("DELETE /api/v1/bans/%s = %d %s, want 200", b.Prefix, code, body)
	}
}

func TestReadyz(t *testing.T) {
	f := newFixture(t, nil)
	f.ready.Store(false)
	code, _, body := f.call(t, "GET", "/readyz", "", "")
	if code != 503 {
		t.Fatalf("GET /readyz before a certificate = %d, want 503", code)
	}
	errorBody(t, body)
	f.ready.Store(true)
	if err := f.client(t, "").Ready(context.Background()); err != nil {
		t.Errorf("Ready() with a certificate = %v", err)
	}
}

func TestReload(t *testing.T) {
	bad := conf.Errors{{File: "gw.toml", Line: 7, Key: "limits.connection_rate", Msg: "must be positive"}}
	tests := []struct {
		name   string
		reload func() error
		want   int
		errors int
	}{
		{"ok", func() error { return nil }, 200, 0},
		{"invalid file", func() error { return bad }, 400, 1},
		{"unreadable file", func() error { _, err := os.ReadFile("/nonexistent/gw.toml"); return err }, 400, 0},
		{"apply failed", func() error { return errors.New("listening on :993: address in use") }, 500, 0},
		{"not available", nil, 500, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, func(o *Options) { o.Reload = tt.reload })
			code, _, body := f.call(t, "POST", "/api/v1/reload", "Bearer "+testToken, "")
			if code != tt.want {
				t.Fatalf("POST /api/v1/reload = %d %s, want %d", code, body, tt.want)
			}
			if code == 200 {
				if !strings.Contains(body, `"reloaded"`) {
					t.Errorf("POST /api/v1/reload = %s, want status reloaded", body)
				}
				return
			}
			e := errorBody(t, body)
			if len(e.Errors) != tt.errors {
				t.Errorf("POST /api/v1/reload: errors = %q, want %d", e.Errors, tt.errors)
			}
			if tt.errors > 0 && !strings.Contains(e.Error, "gw.toml:7: limits.connection_rate") {
				t.Errorf("POST /api/v1/reload: error = %q, want the file, line and key", e.Error)
			}
		})
	}
}

func TestStatsAndSessions(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	logins := prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricLogins, Help: "h"}, []string{"outcome"})
	conns := prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricConnections, Help: "h"}, []string{"listener", "outcome"})
	sessions := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: metricSessions, Help: "h"}, []string{"state"})
	logins.WithLabelValues("ok").Add(3)
	logins.WithLabelValues("failed").Add(2)
	conns.WithLabelValues(":993", "accepted").Add(4)
	conns.WithLabelValues(":143", "accepted").Add(1)
	conns.WithLabelValues(":993", "refused_ban").Add(6)
	sessions.WithLabelValues("relaying").Set(2)
	sessions.WithLabelValues("preauth").Set(0)
	list := []SessionInfo{
		{ID: "b", State: "relaying", Since: now.Add(-time.Minute)},
		{ID: "a", State: "relaying", Since: now.Add(-time.Hour)},
	}
	certs := []acme.CertInfo{
		{Names: []string{"late.example"}, NotAfter: now.Add(90 * 24 * time.Hour), Source: "acme"},
		{Names: []string{"soon.example"}, NotAfter: now.Add(time.Hour), Source: "files"},
	}
	f := newFixture(t, func(o *Options) {
		o.Now = func() time.Time { return now }
		o.Sessions = SessionsFunc(func() []SessionInfo { return slices.Clone(list) })
		o.Certs = func() []acme.CertInfo { return certs }
	})
	f.reg.MustRegister(logins, conns, sessions)
	f.lim.AddBan(netip.MustParseAddr("192.0.2.1"), time.Hour, "")
	c := f.client(t, testToken)

	st, err := c.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"logins[ok]", st.Logins["ok"], 3},
		{"logins[failed]", st.Logins["failed"], 2},
		{"connections[accepted]", st.Connections["accepted"], 5},
		{"connections[refused_ban]", st.Connections["refused_ban"], 6},
		{"sessions[relaying]", st.Sessions["relaying"], 2},
		{"bans.total[manual]", st.Bans.Total[limiter.ReasonManual], 1},
		{"bans.active", uint64(st.Bans.Active), 1},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("Stats().%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if _, ok := st.Sessions["preauth"]; !ok {
		t.Errorf("Stats().sessions = %v, want preauth present at 0", st.Sessions)
	}
	if len(st.Certificates) != 2 || st.Certificates[0].Names[0] != "soon.example" || st.Certificates[0].ExpiresInSeconds != 3600 {
		t.Errorf("Stats().certificates = %+v, want soon.example first, expiring in 3600 s", st.Certificates)
	}

	got, err := c.Sessions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != "a" || got[1].ID != "b" {
		t.Errorf("Sessions() = %+v, want a then b (oldest first)", got)
	}
}

func TestEmptyListsAreArrays(t *testing.T) {
	f := newFixture(t, nil)
	for _, path := range []string{"/api/v1/bans", "/api/v1/sessions"} {
		code, _, body := f.call(t, "GET", path, "Bearer "+testToken, "")
		if code != 200 || strings.TrimSpace(body) != "[]" {
			t.Errorf("GET %s = %d %q, want 200 []", path, code, body)
		}
	}
}

func TestNewChecks(t *testing.T) {
	lim, err := limiter.New(conf.Default().Bans, conf.Default().Limits, limiter.Options{Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		o      Options
		wantOK bool
	}{
		{Options{Address: "127.0.0.1:0", Bans: lim}, true},
		{Options{Address: "[::1]:0", Bans: lim}, true},
		{Options{Address: "localhost:0", Bans: lim}, true},
		{Options{Address: "0.0.0.0:9993", Bans: lim}, false},
		{Options{Address: ":9993", Bans: lim}, false},
		{Options{Address: "192.0.2.1:9993", Bans: lim}, false},
		{Options{Address: "192.0.2.1:9993", Token: "t", Bans: lim}, true},
		{Options{Address: "", Bans: lim}, false},
		{Options{Address: "127.0.0.1:0"}, false},
	}
	for _, tt := range tests {
		_, err := New(tt.o)
		if (err == nil) != tt.wantOK {
			t.Errorf("New(address %q, token %q) = %v, want ok %v", tt.o.Address, tt.o.Token, err, tt.wantOK)
		}
	}
}

func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		content string
		want    string // "" means an error
	}{
		{"s3cret\n", "s3cret"},
		{"  s3cret \r\n\n", "s3cret"},
		{"", ""},
		{" \n\t\n", ""},
		{"two words", ""},
		{"line1\nline2", ""},
	}
	for i, tt := range tests {
		path := filepath.Join(dir, "token"+string(rune('a'+i)))
		if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := ReadTokenFile(path)
		if got != tt.want || (err == nil) != (tt.want != "") {
			t.Errorf("ReadTokenFile(%q) = %q, %v; want %q", tt.content, got, err, tt.want)
		}
	}
	if _, err := ReadTokenFile(filepath.Join(dir, "missing")); err == nil {
		t.Errorf("ReadTokenFile(missing) = nil error, want one")
	}
}

func TestBaseURL(t *testing.T) {
	tests := []struct {
		in, want string // want "" means an error
	}{
		{"127.0.0.1:9993", "http://127.0.0.1:9993"},
		{"localhost:9993", "http://localhost:9993"},
		{":9993", "http://127.0.0.1:9993"},
		{"0.0.0.0:9993", "http://127.0.0.1:9993"},
		{"[::]:9993", "http://[::1]:9993"},
		{"[2001:db8::1]:9993", "http://[2001:db8::1]:9993"},
		{"http://gw.example:9993/", "http://gw.example:9993"},
		{"https://gw.example", "https://gw.example"},
		{"ftp://gw.example", ""},
		{"gw.example", ""},
	}
	for _, tt := range tests {
		got, err := baseURL(tt.in)
		if got != tt.want || (err == nil) != (tt.want != "") {
			t.Errorf("baseURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
