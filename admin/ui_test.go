package admin

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// browser is an HTTP client with a cookie jar, as a browser keeps them.
type browser struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newBrowser(t *testing.T, base string) *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &browser{t: t, base: base, c: &http.Client{
		Jar: jar,
		// Keep redirects visible: the status code of the action is the test.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (b *browser) do(req *http.Request) (*http.Response, string) {
	b.t.Helper()
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp, string(body)
}

func (b *browser) get(path string) (*http.Response, string) {
	b.t.Helper()
	req, err := http.NewRequest("GET", b.base+path, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	return b.do(req)
}

// post sends a form as a browser does, Origin included.
func (b *browser) post(path string, form url.Values) (*http.Response, string) {
	b.t.Helper()
	req, err := http.NewRequest("POST", b.base+path, strings.NewReader(form.Encode()))
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", b.base)
	return b.do(req)
}

// login posts the token and returns the page's CSRF token.
func (b *browser) login(token string) string {
	b.t.Helper()
	resp, body := b.post("/ui/login", url.Values{"token": {token}})
	if resp.StatusCode != http.StatusSeeOther {
		b.t.Fatalf("POST /ui/login = %d %s, want 303", resp.StatusCode, body)
	}
	return b.csrf()
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf loads the page and returns the CSRF token its forms carry.
func (b *browser) csrf() string {
	b.t.Helper()
	resp, body := b.get("/")
	m := csrfField.FindStringSubmatch(body)
	if resp.StatusCode != 200 || m == nil {
		b.t.Fatalf("GET / = %d, no CSRF field in\n%s", resp.StatusCode, body)
	}
	return m[1]
}

func TestUILogin(t *testing.T) {
	f := newFixture(t, nil)
	b := newBrowser(t, f.base)
	resp, body := b.get("/")
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `action="/ui/login"`) {
		t.Fatalf("GET / without a session = %d, want 401 and the login form:\n%s", resp.StatusCode, body)
	}
	if resp, _ := b.post("/ui/login", url.Values{"token": {"wrong"}}); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("POST /ui/login with a wrong token = %d, want 401", resp.StatusCode)
	}
	resp, body = b.post("/ui/login", url.Values{"token": {testToken}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("POST /ui/login = %d %s, want 303", resp.StatusCode, body)
	}
	var c *http.Cookie
	for _, k := range resp.Cookies() {
		if k.Name == sessionCookie {
			c = k
		}
	}
	if c == nil || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure || c.Path != "/" {
		t.Errorf("session cookie = %+v, want HttpOnly, SameSite=Strict, not Secure on plain HTTP, Path=/", c)
	}
	if strings.Contains(c.Value, testToken) {
		t.Errorf("the session cookie carries the token itself")
	}
	if resp, body := b.get("/"); resp.StatusCode != 200 || !strings.Contains(body, `id="bans"`) {
		t.Errorf("GET / after login = %d, want the page:\n%s", resp.StatusCode, body)
	}
	if got := resp.Header.Get("Content-Security-Policy"); !strings.Contains(got, "default-src 'none'") {
		t.Errorf("Content-Security-Policy = %q", got)
	}
	// The bearer token does not open the page's actions, and the cookie does
	// not open the API: each door has its own key.
	if code, _, _ := f.call(t, "GET", "/api/v1/bans", "", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /api/v1/bans without bearer = %d, want 401", code)
	}
}

func TestUISecureCookieOverTLS(t *testing.T) {
	s := &Server{o: Options{TLS: nil}}
	if s.cookie(sessionCookie, "x", time.Hour).Secure {
		t.Errorf("cookie over plain HTTP is Secure: the browser would never send it back")
	}
	s.o.TLS = &tls.Config{}
	if !s.cookie(sessionCookie, "x", time.Hour).Secure {
		t.Errorf("cookie over TLS is not Secure")
	}
}

// TestUIEscapes: a user name, a ban reason and a backend error are what an
// attacker or a broken server controls; each renders as text.
func TestUIEscapes(t *testing.T) {
	hostile := `<script>alert("x")</script>`
	f := newFixture(t, func(o *Options) {
		o.Sessions = SessionsFunc(func() []SessionInfo {
			return []SessionInfo{{ID: "s1", Client: "192.0.2.1:4000", User: hostile, State: "preauth", Since: time.Now()}}
		})
		o.Listeners = func() []ListenerInfo {
			return []ListenerInfo{{Address: "127.0.0.1:0", Bound: "127.0.0.1:993", TLS: "implicit"}}
		}
	})
	f.lim.AddBan(netip.MustParseAddr("192.0.2.5"), time.Hour, `<img src=x onerror="alert(1)">`)
	b := newBrowser(t, f.base)
	b.login(testToken)
	for _, path := range []string{"/", "/ui/live"} {
		_, body := b.get(path)
		if strings.Contains(body, "<script>alert") || strings.Contains(body, "<img src=x") {
			t.Errorf("GET %s renders hostile text as markup:\n%s", path, body)
		}
		if !strings.Contains(body, `&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;`) || !strings.Contains(body, `&lt;img src=x onerror=&#34;alert(1)&#34;&gt;`) {
			t.Errorf("GET %s: the hostile user name or reason is not shown escaped:\n%s", path, body)
		}
		if !strings.Contains(body, "127.0.0.1:993") {
			t.Errorf("GET %s: no listener row", path)
		}
	}
}

// TestUIActionsNeedSessionAndCSRF: each state change needs the session
// cookie (401), the session's own CSRF token and the same origin (403).
func TestUIActionsNeedSessionAndCSRF(t *testing.T) {
	f := newFixture(t, nil)
	ban := func(csrf string) url.Values {
		return url.Values{"ip": {"192.0.2.7"}, "duration": {"1h"}, "reason": {"ui test"}, "csrf": {csrf}}
	}
	stranger := newBrowser(t, f.base)
	if resp, _ := stranger.post("/ui/bans", ban("x")); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("POST /ui/bans without a session = %d, want 401", resp.StatusCode)
	}
	if resp, _ := stranger.get("/ui/live"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /ui/live without a session = %d, want 401", resp.StatusCode)
	}

	b := newBrowser(t, f.base)
	csrf := b.login(testToken)
	other := newBrowser(t, f.base)
	otherCSRF := other.login(testToken)
	for name, token := range map[string]string{"none": "", "wrong": "AAAA", "another session's": otherCSRF} {
		if resp, _ := b.post("/ui/bans", ban(token)); resp.StatusCode != http.StatusForbidden {
			t.Errorf("POST /ui/bans with %s CSRF token = %d, want 403", name, resp.StatusCode)
		}
	}
	req, _ := http.NewRequest("POST", f.base+"/ui/bans", strings.NewReader(ban(csrf).Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "http://evil.example")
	if resp, _ := b.do(req); resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST /ui/bans from another origin = %d, want 403", resp.StatusCode)
	}
	if n := len(f.lim.Bans()); n != 0 {
		t.Fatalf("%d bans made by refused requests", n)
	}

	resp, body := b.post("/ui/bans", ban(csrf))
	if resp.StatusCode != http.StatusSeeOther || len(f.lim.Bans()) != 1 || f.lim.Bans()[0].Reason != "ui test" {
		t.Fatalf("POST /ui/bans = %d %s, bans %+v: want 303 and the ban", resp.StatusCode, body, f.lim.Bans())
	}
	if _, body := b.get("/"); !strings.Contains(body, `data-prefix="192.0.2.7/32"`) || !strings.Contains(body, "Banned 192.0.2.7/32") {
		t.Errorf("the page after the ban shows no row or message for 192.0.2.7/32:\n%s", body)
	}
	if resp, body := b.post("/ui/bans", url.Values{"ip": {"not-an-ip"}, "reason": {"keep me"}, "csrf": {csrf}}); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `value="keep me"`) {
		t.Errorf("POST /ui/bans with a bad address = %d, want 400 with the form's values kept:\n%s", resp.StatusCode, body)
	}
	if resp, _ := b.post("/ui/bans/lift", url.Values{"ip": {"192.0.2.7"}, "csrf": {"bad"}}); resp.StatusCode != http.StatusForbidden || len(f.lim.Bans()) != 1 {
		t.Errorf("POST /ui/bans/lift with a wrong CSRF token = %d, want 403 and the ban kept", resp.StatusCode)
	}
	if resp, _ := b.post("/ui/bans/lift", url.Values{"ip": {"192.0.2.7"}, "csrf": {csrf}}); resp.StatusCode != http.StatusSeeOther || len(f.lim.Bans()) != 0 {
		t.Errorf("POST /ui/bans/lift = %d, bans %v: want 303 and no ban", resp.StatusCode, f.lim.Bans())
	}

	if resp, _ := b.post("/ui/logout", url.Values{"csrf": {csrf}}); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("POST /ui/logout = %d, want 303", resp.StatusCode)
	}
	if resp, _ := b.get("/"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET / after logout = %d, want 401", resp.StatusCode)
	}
}

// TestUISessionCookieForgedOrExpired: the cookie is signed and expires.
func TestUISessionCookieForgedOrExpired(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().Unix())
	f := newFixture(t, func(o *Options) { o.Now = func() time.Time { return time.Unix(now.Load(), 0) } })
	c, _ := f.srv.newSession(time.Unix(now.Load(), 0))
	get := func(value string) int {
		req, _ := http.NewRequest("GET", f.base+"/", nil)
		req.AddCookie(&http.Cookie{Name: sessionCookie, Value: value})
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(c.Value); code != 200 {
		t.Fatalf("GET / with a fresh session = %d, want 200", code)
	}
	body, sig, _ := strings.Cut(c.Value, ".")
	forged := []byte(body)
	forged[3] ^= 1
	for _, v := range []string{string(forged) + "." + sig, body + ".", "garbage", testToken} {
		if code := get(v); code != http.StatusUnauthorized {
			t.Errorf("GET / with cookie %q = %d, want 401", v, code)
		}
	}
	now.Add(int64(sessionTTL / time.Second))
	if code := get(c.Value); code != http.StatusUnauthorized {
		t.Errorf("GET / with an expired session = %d, want 401", code)
	}
}

// TestUINoTokenOnLoopback: without a token the page opens at once, as the
// API does, and its forms still need the CSRF token.
func TestUINoTokenOnLoopback(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Token = "" })
	b := newBrowser(t, f.base)
	csrf := b.csrf()
	if resp, _ := b.post("/ui/bans", url.Values{"ip": {"192.0.2.8"}, "csrf": {"nope"}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST /ui/bans with a wrong CSRF token = %d, want 403", resp.StatusCode)
	}
	if resp, _ := b.post("/ui/bans", url.Values{"ip": {"192.0.2.8"}, "csrf": {csrf}}); resp.StatusCode != http.StatusSeeOther || len(f.lim.Bans()) != 1 {
		t.Errorf("POST /ui/bans = %d, want 303 and a ban", resp.StatusCode)
	}
}

// TestUIHostCheck: the page is behind the same Host rule as the API, so a
// rebinding page cannot read it.
func TestUIHostCheck(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Token = "" })
	for _, path := range []string{"/", "/ui/live", "/ui/static/app.js"} {
		if code, _ := send(t, f.srv.Addr().String(), request{method: "GET", path: path, host: "evil.example:" + f.srv.boundPort()}); code != http.StatusMisdirectedRequest {
			t.Errorf("GET %s with Host evil.example = %d, want 421", path, code)
		}
	}
	if code, body := send(t, f.srv.Addr().String(), request{method: "GET", path: "/ui/static/app.css"}); code != 200 || !strings.Contains(body, "--ok") {
		t.Errorf("GET /ui/static/app.css = %d", code)
	}
}

func TestLoginRing(t *testing.T) {
	var r loginRing
	t0 := time.Date(2026, 12, 2, 10, 0, 30, 0, time.UTC)
	r.record(t0, map[string]uint64{"ok": 5, "failed": 1})                     // the start: counts nothing
	r.record(t0.Add(20*time.Second), map[string]uint64{"ok": 7, "failed": 4}) // 10:00: +2 ok, +3 failed
	r.record(t0.Add(40*time.Second), map[string]uint64{"ok": 8, "failed": 4}) // 10:01: +1 ok
	r.record(t0.Add(3*time.Minute), map[string]uint64{"ok": 8, "failed": 9})  // 10:03: +5 failed
	got := r.perMinute(t0.Add(3 * time.Minute))
	if len(got) != ringMinutes {
		t.Fatalf("perMinute: %d minutes, want %d", len(got), ringMinutes)
	}
	want := map[string]map[string]uint64{
		"10:00": {"ok": 2, "failed": 3}, "10:01": {"ok": 1}, "10:02": {}, "10:03": {"failed": 5},
	}
	for _, m := range got {
		w, ok := want[m.Minute.Format("15:04")]
		if !ok {
			w = map[string]uint64{}
		}
		for _, k := range []string{"ok", "failed"} {
			if m.Counts[k] != w[k] {
				t.Errorf("minute %s %s = %d, want %d", m.Minute.Format("15:04"), k, m.Counts[k], w[k])
			}
		}
	}
	for i := range 2 * ringMinutes {
		r.record(t0.Add(time.Hour+time.Duration(i)*time.Minute), map[string]uint64{"ok": uint64(i)})
	}
	if len(r.mins) != ringMinutes {
		t.Errorf("ring holds %d minutes, want at most %d", len(r.mins), ringMinutes)
	}
}

// TestUIBanInKernel: with bans.firewall the bans table says whether the
// kernel drops each prefix.
func TestUIBanInKernel(t *testing.T) {
	dropped := netip.MustParsePrefix("192.0.2.1/32")
	f := newFixture(t, func(o *Options) {
		o.Token = ""
		o.InKernel = func(p netip.Prefix) bool { return p == dropped }
	})
	f.lim.AddBan(netip.MustParseAddr("192.0.2.1"), time.Hour, "a")
	f.lim.AddBan(netip.MustParseAddr("192.0.2.2"), time.Hour, "b")
	b := newBrowser(t, f.base)
	b.csrf() // the first visit without a token hands out the session cookie
	_, body := b.get("/ui/live")
	for prefix, want := range map[string]string{"192.0.2.1/32": `class="good">dropped<`, "192.0.2.2/32": `class="warn">not yet<`} {
		i := strings.Index(body, `<tr data-prefix="`+prefix+`"`)
		if i < 0 {
			t.Fatalf("no row for %s in\n%s", prefix, body)
		}
		row, _, _ := strings.Cut(body[i:], "</tr>")
		if !strings.Contains(row, want) {
			t.Errorf("row of %s = %s, want %s", prefix, row, want)
		}
	}
}
