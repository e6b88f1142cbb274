package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakePool implements Backends over a map, recording every call: the HTTP
// layer is what is under test here; the real pool is tested in package
// backend and end to end in cmd/imapgw.
type fakePool struct {
	mu       sync.Mutex
	servers  []BackendInfo
	pins     map[string]string // user → pinned server
	sessions map[string]int    // user → open sessions
	calls    []string
}

func newFakePool() *fakePool {
	return &fakePool{
		servers: []BackendInfo{
			{Name: "imap1", Address: "10.0.0.1:143", Weight: 100, State: "up", Sessions: 2,
				LastCheck: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), Capabilities: []string{"IMAP4rev1", "STARTTLS"}},
			{Name: "imap2", Address: "10.0.0.2:143", Weight: 200, State: "down", LastError: "dial tcp: connection refused"},
		},
		pins:     map[string]string{},
		sessions: map[string]int{"alice": 2},
	}
}

func (p *fakePool) record(s string) { p.calls = append(p.calls, s) }

func (p *fakePool) find(name string) *BackendInfo {
	for i := range p.servers {
		if p.servers[i].Name == name {
			return &p.servers[i]
		}
	}
	return nil
}

func (p *fakePool) Servers() []BackendInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.servers)
}

func (p *fakePool) Drain(name string, kick bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.find(name)
	if s == nil {
		return ErrUnknownBackend
	}
	s.State = "draining"
	p.record("drain " + name + map[bool]string{true: " kick", false: ""}[kick])
	return nil
}

func (p *fakePool) Undrain(name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.find(name)
	if s == nil {
		return ErrUnknownBackend
	}
	s.State = "up"
	p.record("undrain " + name)
	return nil
}

func (p *fakePool) Where(user string) UserInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pin := p.pins[user]; pin != "" {
		return UserInfo{User: user, Backend: pin, Reason: "moved", Pinned: pin, Open: p.sessions[user]}
	}
	return UserInfo{User: user, Backend: "imap1", Reason: "hash", Open: p.sessions[user]}
}

func (p *fakePool) Move(user, name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.find(name) == nil {
		return ErrUnknownBackend
	}
	p.pins[user] = name
	p.sessions[user] = 0
	p.record("move " + user + " " + name)
	return nil
}

func (p *fakePool) Kick(user string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.sessions[user]
	p.sessions[user] = 0
	p.record("kick " + user)
	return n
}

func (p *fakePool) callList() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.calls)
}

// TestBackendsAPI drives every pool route through the Client over a real
// socket: the answers' JSON, 404 for unknown servers, the pool calls made.
func TestBackendsAPI(t *testing.T) {
	pool := newFakePool()
	f := newFixture(t, func(o *Options) {
		o.Backends = pool
		o.Sessions = SessionsFunc(func() []SessionInfo {
			return []SessionInfo{
				{ID: "s2", User: "Alice", Backend: "imap1", State: "relaying", Since: time.Unix(20, 0)},
				{ID: "s1", User: "alice", Backend: "imap1", State: "relaying", Since: time.Unix(10, 0)},
				{ID: "s3", User: "bob", Backend: "imap1", State: "relaying", Since: time.Unix(5, 0)},
				{ID: "s4", Client: "192.0.2.1:1", State: "preauth", Since: time.Unix(1, 0)},
			}
		})
	})
	c := f.client(t, testToken)
	ctx := context.Background()

	list, err := c.Backends(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "imap1" || list[0].State != "up" || list[0].Sessions != 2 ||
		!slices.Equal(list[0].Capabilities, []string{"IMAP4rev1", "STARTTLS"}) ||
		list[1].State != "down" || list[1].LastError == "" || list[1].Capabilities == nil {
		t.Fatalf("backends = %+v", list)
	}
	// The raw JSON: stable snake_case names, [] rather than null.
	code, _, body := f.call(t, "GET", "/api/v1/backends", "Bearer "+testToken, "")
	for _, want := range []string{`"last_check": "2026-12-01T10:00:00Z"`, `"last_error": "dial tcp: connection refused"`, `"capabilities": []`, `"weight": 200`} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("GET /api/v1/backends = %d, body lacks %s:\n%s", code, want, body)
		}
	}

	if r, err := c.Drain(ctx, "imap1", true); err != nil || r.Status != "draining" || !r.Kick {
		t.Fatalf("drain imap1 -kick = %+v, %v", r, err)
	}
	if r, err := c.Undrain(ctx, "imap1"); err != nil || r.Status != "undrained" {
		t.Fatalf("undrain imap1 = %+v, %v", r, err)
	}
	for _, op := range []func() error{
		func() error { _, err := c.Drain(ctx, "nope", false); return err },
		func() error { _, err := c.Undrain(ctx, "nope"); return err },
		func() error { _, err := c.Move(ctx, "alice", "nope"); return err },
	} {
		if err := op(); !IsStatus(err, http.StatusNotFound) || !strings.Contains(err.Error(), `"nope"`) {
			t.Errorf("unknown server: err = %v, want 404 naming it", err)
		}
	}
	// A drain with no body at all is a drain without kick.
	if code, _, body := f.call(t, "POST", "/api/v1/backends/imap2/drain", "Bearer "+testToken, ""); code != 200 {
		t.Errorf("drain without a body = %d %s", code, body)
	}

	u, err := c.Where(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if u.Backend != "imap1" || u.Reason != "hash" || u.Open != 2 || len(u.Sessions) != 2 ||
		u.Sessions[0].ID != "s1" || u.Sessions[1].ID != "s2" {
		t.Fatalf("where alice = %+v", u)
	}
	m, err := c.Move(ctx, "alice", "imap2")
	if err != nil || m.Status != "moved" || m.Backend != "imap2" || m.Closed != 2 {
		t.Fatalf("move alice imap2 = %+v, %v", m, err)
	}
	if u, _ := c.Where(ctx, "alice"); u.Backend != "imap2" || u.Reason != "moved" {
		t.Fatalf("where alice after move = %+v", u)
	}
	pool.mu.Lock()
	pool.sessions["bob"] = 1
	pool.mu.Unlock()
	if k, err := c.Kick(ctx, "bob"); err != nil || k.Status != "kicked" || k.Closed != 1 {
		t.Fatalf("kick bob = %+v, %v", k, err)
	}
	want := []string{"drain imap1 kick", "undrain imap1", "drain imap2", "move alice imap2", "kick bob"}
	if got := pool.callList(); !slices.Equal(got, want) {
		t.Errorf("pool calls = %q, want %q", got, want)
	}
}

// TestBackendsAPIRules: the pool routes follow the rest of /api/v1: token,
// JSON for state changes, Host check, strict bodies.
func TestBackendsAPIRules(t *testing.T) {
	pool := newFakePool()
	f := newFixture(t, func(o *Options) { o.Backends = pool })
	addr := f.srv.Addr().String()
	auth := "Bearer " + testToken
	cases := []struct {
		req  request
		want int
	}{
		{request{method: "GET", path: "/api/v1/backends"}, 401},
		{request{method: "POST", path: "/api/v1/backends/imap1/drain", contentType: "application/json"}, 401},
		{request{method: "POST", path: "/api/v1/users/alice/kick", contentType: "application/json"}, 401},
		{request{method: "POST", path: "/api/v1/backends/imap1/drain", auth: auth, contentType: "text/plain", body: `{"kick": true}`}, 415},
		{request{method: "POST", path: "/api/v1/backends/imap1/undrain", auth: auth}, 415},
		{request{method: "POST", path: "/api/v1/users/alice/move", auth: auth, contentType: "application/x-www-form-urlencoded", body: `{"backend": "imap2"}`}, 415},
		{request{method: "POST", path: "/api/v1/users/alice/kick", auth: auth}, 415},
		{request{method: "GET", path: "/api/v1/backends", auth: auth, host: "evil.example"}, 421},
		{request{method: "POST", path: "/api/v1/users/alice/kick", auth: auth, host: "evil.example:80", contentType: "application/json"}, 421},
		{request{method: "POST", path: "/api/v1/backends/imap1/drain", auth: auth, contentType: "application/json", body: `{"kik": true}`}, 400},
		{request{method: "POST", path: "/api/v1/users/alice/move", auth: auth, contentType: "application/json", body: `{}`}, 400},
		{request{method: "POST", path: "/api/v1/users/alice/move", auth: auth, contentType: "application/json", body: `{"backend": "imap2"} {}`}, 400},
		{request{method: "POST", path: "/api/v1/users/alice/move", auth: auth, contentType: "application/json"}, 400},
		{request{method: "GET", path: "/api/v1/users/a%01b", auth: auth}, 400},
		{request{method: "GET", path: "/api/v1/users/" + strings.Repeat("a", 300), auth: auth}, 400},
		{request{method: "DELETE", path: "/api/v1/backends", auth: auth, contentType: "application/json"}, 405},
		{request{method: "GET", path: "/api/v1/backends/imap1/drain", auth: auth}, 405},
		{request{method: "GET", path: "/api/v1/users/alice", auth: auth}, 200},
	}
	for _, tt := range cases {
		code, body := send(t, addr, tt.req)
		if code != tt.want {
			t.Errorf("%s %s (Host %q, Content-Type %q) = %d %s, want %d", tt.req.method, tt.req.path, tt.req.host, tt.req.contentType, code, body, tt.want)
			continue
		}
		if code != 200 {
			errorBody(t, body)
		}
	}
	if got := pool.callList(); len(got) != 0 {
		t.Errorf("refused requests reached the pool: %q", got)
	}
}

// TestBackendsAPIWithoutPool: an endpoint built without a pool says so.
func TestBackendsAPIWithoutPool(t *testing.T) {
	f := newFixture(t, nil)
	code, _, body := f.call(t, "GET", "/api/v1/backends", "Bearer "+testToken, "")
	if code != http.StatusNotImplemented {
		t.Fatalf("GET /api/v1/backends without a pool = %d %s, want 501", code, body)
	}
	var e apiError
	if json.Unmarshal([]byte(body), &e); !strings.Contains(e.Error, "pool") {
		t.Errorf("error %q does not name the pool", e.Error)
	}
}
