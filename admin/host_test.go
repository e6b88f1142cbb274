package admin

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// request is one request with every header under the test's control.
type request struct {
	method, path, host, contentType, auth, body string
}

// send sends req to the server at addr and returns the status and the body.
func send(t *testing.T, addr string, req request) (int, string) {
	t.Helper()
	r, err := http.NewRequest(req.method, "http://"+addr+req.path, strings.NewReader(req.body))
	if err != nil {
		t.Fatal(err)
	}
	if req.host != "" {
		r.Host = req.host
	}
	if req.contentType != "" {
		r.Header.Set("Content-Type", req.contentType)
	}
	if req.auth != "" {
		r.Header.Set("Authorization", req.auth)
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestStateChangeNeedsJSON: with no token (loopback), a page in a browser on
// the same host could POST text/plain or a form without a CORS preflight; the
// endpoint refuses every state change that is not application/json
// (issue 11, point 5). Before the fix a text/plain ban was answered 201.
func TestStateChangeNeedsJSON(t *testing.T) {
	var reloads atomic.Int32
	f := newFixture(t, func(o *Options) {
		o.Token = ""
		o.Reload = func() error { reloads.Add(1); return nil }
	})
	addr := f.srv.Addr().String()
	ban := `{"ip": "192.0.2.7", "duration": "1h"}`
	refused := []request{
		{method: "POST", path: "/api/v1/bans", contentType: "text/plain", body: ban},
		{method: "POST", path: "/api/v1/bans", contentType: "text/plain; charset=utf-8", body: ban},
		{method: "POST", path: "/api/v1/bans", contentType: "application/x-www-form-urlencoded", body: ban},
		{method: "POST", path: "/api/v1/bans", contentType: "multipart/form-data; boundary=x", body: ban},
		{method: "POST", path: "/api/v1/bans", body: ban},
		{method: "POST", path: "/api/v1/bans", contentType: "application/jsonx", body: ban},
		{method: "POST", path: "/api/v1/reload", contentType: "text/plain"},
		{method: "POST", path: "/api/v1/reload"},
		{method: "DELETE", path: "/api/v1/bans/192.0.2.7"},
	}
	for _, req := range refused {
		code, body := send(t, addr, req)
		if code != http.StatusUnsupportedMediaType {
			t.Errorf("%s %s with Content-Type %q = %d %s, want 415", req.method, req.path, req.contentType, code, body)
			continue
		}
		if e := errorBody(t, body); !strings.Contains(e.Error, "application/json") {
			t.Errorf("%s %s: error %q does not say what is needed", req.method, req.path, e.Error)
		}
	}
	if n := len(f.lim.Bans()); n != 0 || reloads.Load() != 0 {
		t.Fatalf("after refused requests: %d bans, %d reloads; want none", n, reloads.Load())
	}

	ok := []struct {
		req  request
		want int
	}{
		{request{method: "POST", path: "/api/v1/bans", contentType: "application/json; charset=utf-8", body: ban}, 201},
		{request{method: "DELETE", path: "/api/v1/bans/192.0.2.7", contentType: "application/json"}, 200},
		{request{method: "POST", path: "/api/v1/reload", contentType: "Application/JSON"}, 200},
		{request{method: "GET", path: "/api/v1/bans"}, 200}, // reading needs no Content-Type
	}
	for _, tt := range ok {
		if code, body := send(t, addr, tt.req); code != tt.want {
			t.Errorf("%s %s with Content-Type %q = %d %s, want %d", tt.req.method, tt.req.path, tt.req.contentType, code, body, tt.want)
		}
	}
	if reloads.Load() != 1 {
		t.Errorf("reloads = %d, want 1", reloads.Load())
	}
}

// TestStateChangeNeedsJSONWithToken: the token is checked first (a stranger
// learns nothing of the API), then the Content-Type.
func TestStateChangeNeedsJSONWithToken(t *testing.T) {
	f := newFixture(t, nil)
	addr := f.srv.Addr().String()
	ban := `{"ip": "192.0.2.7"}`
	if code, _ := send(t, addr, request{method: "POST", path: "/api/v1/bans", contentType: "text/plain", body: ban}); code != 401 {
		t.Errorf("POST text/plain without the token = %d, want 401", code)
	}
	auth := "Bearer " + testToken
	if code, _ := send(t, addr, request{method: "POST", path: "/api/v1/bans", contentType: "text/plain", auth: auth, body: ban}); code != 415 {
		t.Errorf("POST text/plain with the token = %d, want 415", code)
	}
	if n := len(f.lim.Bans()); n != 0 {
		t.Errorf("%d bans after text/plain POSTs, want 0", n)
	}
}

// TestHostRule: the endpoint answers only requests whose Host is its own
// address (as bound), "localhost" on a loopback address, or admin.names; a
// page that rebinds its DNS name to 127.0.0.1 sends its own name and gets
// 421. Before the fix GET /api/v1/sessions with Host evil.example was 200.
func TestHostRule(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.Token = ""
		o.Names = []string{"Admin.Example", "198.51.100.4"}
	})
	addr := f.srv.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	tests := []struct {
		path, host string
		want       int
	}{
		{"/api/v1/sessions", "evil.example", 421},
		{"/api/v1/sessions", "evil.example:" + port, 421},
		{"/api/v1/bans", "evil.example:" + port, 421},
		{"/metrics", "evil.example:" + port, 421},
		{"/debug/pprof/heap", "evil.example:" + port, 421},
		{"/nope", "evil.example:" + port, 421},
		{"/api/v1/sessions", "127.0.0.1.evil.example:" + port, 421},
		{"/api/v1/sessions", "127.0.0.1", 421},         // port 80
		{"/api/v1/sessions", "127.0.0.1:1", 421},       // another port
		{"/api/v1/sessions", "127.0.0.2:" + port, 421}, // not the address it came to
		{"/api/v1/sessions", "[::1]:" + port, 421},
		{"/api/v1/sessions", "127.0.0.1:" + port, 200},
		{"/api/v1/sessions", "localhost:" + port, 200},
		{"/api/v1/sessions", "LocalHost:" + port, 200},
		{"/api/v1/sessions", "localhost:1", 421},
		{"/api/v1/sessions", "admin.example", 200}, // names: any port (a proxy in front)
		{"/api/v1/sessions", "ADMIN.example:8443", 200},
		{"/api/v1/sessions", "198.51.100.4:9993", 200},
		{"/api/v1/sessions", "sub.admin.example", 421},
		// Probes come by whatever address the balancer has.
		{"/healthz", "evil.example", 200},
		{"/readyz", "10.1.2.3:9993", 200},
		// Without a token there are no profiles.
		{"/debug/pprof/heap", "127.0.0.1:" + port, 403},
		{"/debug/pprof/", "127.0.0.1:" + port, 403},
	}
	for _, tt := range tests {
		code, body := send(t, addr, request{method: "GET", path: tt.path, host: tt.host})
		if code != tt.want {
			t.Errorf("GET %s with Host %q = %d %s, want %d", tt.path, tt.host, code, body, tt.want)
			continue
		}
		if code >= 400 {
			errorBody(t, body)
		}
	}
	// A state change from a rebound page is refused before anything else,
	// even with the right Content-Type.
	code, _ := send(t, addr, request{method: "POST", path: "/api/v1/bans", host: "evil.example:" + port,
		contentType: "application/json", body: `{"ip": "192.0.2.7"}`})
	if code != 421 || len(f.lim.Bans()) != 0 {
		t.Errorf("POST /api/v1/bans with Host evil.example = %d, %d bans; want 421, none", code, len(f.lim.Bans()))
	}
}

// TestHostRuleNoHost: an HTTP/1.0 request without Host names nothing.
func TestHostRuleNoHost(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Token = "" })
	c, err := net.Dial("tcp", f.srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "GET /api/v1/sessions HTTP/1.0\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 421 {
		t.Errorf("HTTP/1.0 GET without Host = %d, want 421", resp.StatusCode)
	}
}

// TestHostRuleBindings: the address as bound is accepted for each way of
// writing a loopback address, and a wildcard bind accepts the address the
// connection came to.
func TestHostRuleBindings(t *testing.T) {
	tests := []struct {
		address, dial, host string // host "" : the dialled address
		token               string
		want                int
	}{
		{"127.0.0.1:0", "127.0.0.1", "", "", 200},
		{"[::1]:0", "::1", "", "", 200},
		{"[::1]:0", "::1", "[0:0::1]", "", 200},
		{"[::1]:0", "::1", "localhost", "", 200},
		{"[::1]:0", "::1", "evil.example", "", 421},
		{"localhost:0", "127.0.0.1", "localhost", "", 200},
		{"localhost:0", "127.0.0.1", "evil.example", "", 421},
		{"0.0.0.0:0", "127.0.0.1", "", testToken, 200},
		{"0.0.0.0:0", "127.0.0.1", "evil.example", testToken, 421},
	}
	for _, tt := range tests {
		f := newFixture(t, func(o *Options) { o.Address, o.Token = tt.address, tt.token })
		_, port, _ := net.SplitHostPort(f.srv.Addr().String())
		addr := net.JoinHostPort(tt.dial, port)
		host := addr
		if tt.host != "" {
			host = tt.host + ":" + port
			if strings.Contains(tt.host, ":") {
				host = "[" + strings.Trim(tt.host, "[]") + "]:" + port
			}
		}
		auth := ""
		if tt.token != "" {
			auth = "Bearer " + tt.token
		}
		code, body := send(t, addr, request{method: "GET", path: "/api/v1/bans", host: host, auth: auth})
		if code != tt.want {
			t.Errorf("bound to %s, GET /api/v1/bans via %s with Host %q = %d %s, want %d", tt.address, addr, host, code, body, tt.want)
		}
	}
}

// TestAddBanValidation: a ban longer than bans.max_ban is 400 and one the
// policy would not enforce (bans.allow) is 409, each with the reason, and
// neither is stored (issue 11, point 6). Before the fix both were 201.
func TestAddBanValidation(t *testing.T) {
	f := newFixture(t, nil) // bans.allow = ::1/128, bans.max_ban = 168h
	auth := "Bearer " + testToken
	tests := []struct {
		body  string
		want  int
		words []string
	}{
		{`{"ip": "192.0.2.1", "duration": "2000000h"}`, 400, []string{"bans.max_ban", "168h"}},
		{`{"ip": "192.0.2.1", "duration": "168h1s"}`, 400, []string{"bans.max_ban"}},
		{`{"ip": "192.0.2.1", "duration": "0s"}`, 400, []string{"positive"}},
		{`{"ip": "192.0.2.1", "duration": "-5m"}`, 400, []string{"positive"}},
		{`{"ip": "::1", "duration": "1h"}`, 409, []string{"bans.allow", "::1/128", "not be enforced"}},
		{`{"ip": "::1"}`, 409, []string{"bans.allow"}},
	}
	for _, tt := range tests {
		code, body := send(t, f.srv.Addr().String(), request{method: "POST", path: "/api/v1/bans",
			contentType: "application/json", auth: auth, body: tt.body})
		if code != tt.want {
			t.Errorf("POST /api/v1/bans %s = %d %s, want %d", tt.body, code, body, tt.want)
			continue
		}
		e := errorBody(t, body)
		for _, w := range tt.words {
			if !strings.Contains(e.Error, w) {
				t.Errorf("POST /api/v1/bans %s: error %q does not mention %q", tt.body, e.Error, w)
			}
		}
	}
	if n := len(f.lim.Bans()); n != 0 {
		t.Errorf("%d bans stored after refused requests, want 0", n)
	}
	if code, body := send(t, f.srv.Addr().String(), request{method: "POST", path: "/api/v1/bans",
		contentType: "application/json", auth: auth, body: `{"ip": "192.0.2.1", "duration": "168h"}`}); code != 201 {
		t.Errorf("POST /api/v1/bans for exactly bans.max_ban = %d %s, want 201", code, body)
	}
}
