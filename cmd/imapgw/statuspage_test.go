package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

// screenshotPath, when set (make screenshot), is where TestStatusPageInBrowser
// saves a PNG of the page with the attack's ban, a manual ban and sessions on it.
var screenshotPath = flag.String("screenshot", "", "save a PNG of the status page here (make screenshot)")

const (
	pageAttacker  = "127.0.0.7"                          // guesses passwords until banned
	hostileUser   = `<img src=x onerror=window.pwned=1>` // a user name that is markup
	hostileSource = "127.0.0.8"
)

// startBrowser starts headless Chromium (Debian's chromium) for one test;
// it is killed when the test ends. Every step the test takes runs under
// budget, so a stuck page fails the test rather than hanging it.
func startBrowser(t *testing.T, budget time.Duration) context.Context {
	t.Helper()
	testbed.Need(t, "chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(testbed.Path("chromium")),
		chromedp.NoSandbox, // Chromium's sandbox refuses to start as root, which CI is
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelBrowser(); cancelAlloc() })
	// The first action starts the browser, which then lives as long as the
	// context of that action: bctx, not a step's shorter one.
	began := time.Now()
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	t.Logf("chromium started in %s", time.Since(began).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(bctx, budget)
	t.Cleanup(cancel)
	return ctx
}

// step runs browser actions and fails the test, naming what, if they do not
// finish within d.
func step(t *testing.T, ctx context.Context, d time.Duration, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if err := chromedp.Do(sctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression (awaiting a promise) in the page.
func eval[T any](t *testing.T, ctx context.Context, js string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluating %s: %v", js, err)
	}
	return v
}

// TestStatusPageInBrowser: an operator in a real browser logs in with the
// token, watches a real attack on the gateway (against a real Dovecot) end in
// a ban that appears by itself, lifts it with its button, and the source logs
// in again. A hostile user name shows as text, a half-typed form survives the
// refreshes, and requests without the cookie or with a wrong CSRF token are
// refused, as is a form another origin on the same host makes the browser post.
func TestStatusPageInBrowser(t *testing.T) {
	start := time.Now()
	ctx := startBrowser(t, 50*time.Second)
	d := testbed.StartDovecot(t, testbed.DovecotOptions{})
	cfg := adminTestConfig(t, d.Addr) // bans.allow: ::1 only, so 127.0.0.7 can be banned
	cfg.Backend.ClientIP = conf.ClientIPID
	cfg.Bans.SourceFailures = 1                     // Dovecot's auth penalty makes each failure cost seconds
	cfg.Limits.PreauthTimeout = conf.D(time.Minute) // the hostile session stays while the page is read
	// The hostile session's source is never banned: a ban would end the
	// session with BYE before the page is read.
	cfg.Bans.Allow = append(cfg.Bans.Allow, netip.MustParsePrefix(hostileSource+"/32"))
	env := startAdminEnv(t, cfg, "")
	base := "http://" + env.addr
	lift := chromedp.CSS(`button.lift[data-prefix="` + pageAttacker + `/32"]`)
	consoleProblems := watchConsole(t, ctx)

	step(t, ctx, 15*time.Second, "logging in with the token",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), env.token),
		chromedp.Submit(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS("#bans")),
	)
	checkSessionCookie(t, ctx)

	env.login(t) // a relayed session through Dovecot, for the sessions-by-backend table
	// The ban form is outside the refreshing part: what is typed there stays.
	// window.stay marks this document: a reload would lose it.
	step(t, ctx, 5*time.Second, "typing into the ban form",
		chromedp.SendKeys(chromedp.CSS("#ban-reason"), "typed before the attack"),
	)
	eval[bool](t, ctx, `window.stay = true`)

	// The hostile session and the attack wait on Dovecot's failure delay
	// together.
	hostileC := make(chan net.Conn, 1)
	go func() { hostileC <- hostileSession(t, env.imaps) }()
	attackUntilBanned(t, env.imaps)
	hostile := <-hostileC
	if hostile == nil {
		t.FailNow()
	}
	defer hostile.Close()
	step(t, ctx, 10*time.Second, "the ban appearing by itself (self-refresh)", chromedp.WaitVisible(lift))
	if !eval[bool](t, ctx, `window.stay === true`) {
		t.Errorf("the page was reloaded; the live part should refresh in place")
	}
	if v, _ := chromedp.Run(ctx, chromedp.Value(chromedp.CSS("#ban-reason"))); v != "typed before the attack" {
		t.Errorf("the half-typed reason after refreshes = %q", v)
	}
	row := eval[string](t, ctx, `document.querySelector('tr[data-prefix="`+pageAttacker+`/32"]').innerText`)
	if !strings.Contains(row, "failures") {
		t.Errorf("the ban's row %q does not give its reason", row)
	}

	users := eval[[]string](t, ctx, `Array.from(document.querySelectorAll('#sessions td.user')).map(e => e.textContent)`)
	if !slices.Contains(users, hostileUser) || !slices.Contains(users, "demo") {
		t.Errorf("session users on the page = %q, want %q as text and demo; sessions: %s", users, hostileUser,
			eval[string](t, ctx, `document.querySelector('#sessions').outerHTML`))
	}
	if eval[bool](t, ctx, `window.pwned !== undefined || document.querySelector('#sessions td.user img') !== null`) {
		t.Errorf("the hostile user name became markup on the page")
	}

	step(t, ctx, 10*time.Second, "banning an address with the form",
		chromedp.SendKeys(chromedp.CSS("#ban-ip"), "192.0.2.7"),
		chromedp.Click(chromedp.CSS("#ban-submit")),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-prefix="192.0.2.7/32"]`)),
	)
	if r := eval[string](t, ctx, `document.querySelector('tr[data-prefix="192.0.2.7/32"] .reason').textContent`); r != "typed before the attack" {
		t.Errorf("the manual ban's reason = %q", r)
	}
	if *screenshotPath != "" {
		saveScreenshot(t, ctx, *screenshotPath)
	}

	step(t, ctx, 10*time.Second, "lifting the ban with its button",
		chromedp.Click(lift),
		chromedp.WaitVisible(chromedp.CSS("#flash")),
		chromedp.WaitNotPresent(lift),
	)
	if f, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#flash"))); !strings.Contains(f, "Lifted the ban of "+pageAttacker) {
		t.Errorf("flash after lift = %q", f)
	}
	if in := env.g.lim.Source(netip.MustParseAddr(pageAttacker)); in.Ban != nil {
		t.Fatalf("the policy still bans %s after the lift: %+v", pageAttacker, in.Ban)
	}
	if err := tryLoginFrom(pageAttacker, env.imaps, "alice", d.Users["alice"]); err != nil {
		t.Errorf("the lifted source logging in with the right password: %v", err)
	}

	// The page's own origin, but no cookie or a forged CSRF token: refused.
	got := eval[[]int](t, ctx, `(async () => {
		const csrf = document.querySelector('#ban-form input[name=csrf]').value;
		const form = (token) => new URLSearchParams({ip: '192.0.2.9', csrf: token});
		const noCookie = await fetch('/ui/bans', {method: 'POST', credentials: 'omit', body: form(csrf)});
		const forged = await fetch('/ui/bans', {method: 'POST', body: form('forged')});
		const liftForged = await fetch('/ui/bans/lift', {method: 'POST', body: new URLSearchParams({ip: '192.0.2.7', csrf: 'forged'})});
		const live = await fetch('/ui/live', {credentials: 'omit'});
		return [noCookie.status, forged.status, liftForged.status, live.status];
	})()`)
	if want := []int{401, 403, 403, 401}; !slices.Equal(got, want) {
		t.Errorf("ban without cookie, ban and lift with a forged CSRF token, live without cookie = %v, want %v", got, want)
	}
	if p := consoleProblems(); len(p) > 0 {
		t.Errorf("the page's console reports script errors or blocked content:\n%s", strings.Join(p, "\n"))
	}
	crossSiteForm(t, ctx, base)
	for _, ip := range []string{"192.0.2.9", "192.0.2.66"} {
		if in := env.g.lim.Source(netip.MustParseAddr(ip)); in.Ban != nil {
			t.Errorf("a refused request banned %s", ip)
		}
	}
	if in := env.g.lim.Source(netip.MustParseAddr("192.0.2.7")); in.Ban == nil {
		t.Errorf("a refused request lifted the ban of 192.0.2.7")
	}
	t.Logf("status page test: %s", time.Since(start).Round(time.Millisecond))
}

// checkSessionCookie: the browser holds the session as HttpOnly (no script
// reads it) and SameSite=Strict; the token itself is not in it.
func checkSessionCookie(t *testing.T, ctx context.Context) {
	t.Helper()
	res, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{})
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, c := range res.Cookies {
		if c.Name != "imapgw_session" {
			continue
		}
		found = true
		if !c.HTTPOnly || c.SameSite != network.CookieSameSiteStrict {
			t.Errorf("session cookie: HttpOnly %v, SameSite %q; want HttpOnly, Strict", c.HTTPOnly, c.SameSite)
		}
	}
	if !found {
		t.Errorf("no session cookie in the browser after login")
	}
	if s := eval[string](t, ctx, `document.cookie`); s != "" {
		t.Errorf("document.cookie = %q: the session cookie is readable by scripts", s)
	}
}

// hostileSession opens a session that tries LOGIN with hostileUser (Dovecot
// refuses it) and stays open, so the page lists it with that user name. It
// runs in its own goroutine: on failure it reports with t.Errorf and returns nil.
func hostileSession(t *testing.T, imaps string) net.Conn {
	dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(hostileSource)}, Timeout: 5 * time.Second}
	raw, err := dl.Dial("tcp", imaps)
	if err != nil {
		t.Errorf("hostile session: %v", err)
		return nil
	}
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
	c.SetDeadline(time.Now().Add(15 * time.Second))
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "a LOGIN %q %q\r\n", hostileUser, "whatever")
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			c.Close()
			t.Errorf("hostile LOGIN: %v", err)
			return nil
		}
		if strings.HasPrefix(l, "a ") {
			if !strings.HasPrefix(l, "a NO") {
				c.Close()
				t.Errorf("hostile LOGIN answered %q, want NO", l)
				return nil
			}
			break
		}
	}
	c.SetDeadline(time.Time{})
	return c
}

// attackUntilBanned guesses alice's password from pageAttacker until the
// gateway refuses the connection.
func attackUntilBanned(t *testing.T, imaps string) {
	t.Helper()
	for i := range 10 {
		err := tryLoginFrom(pageAttacker, imaps, "alice", fmt.Sprintf("guess-%d", i))
		if err == nil {
			t.Fatalf("guess %d logged in", i)
		}
		if strings.HasPrefix(err.Error(), "refused") {
			t.Logf("%s refused after %d wrong passwords", pageAttacker, i)
			return
		}
	}
	t.Fatalf("%s was not banned after 10 wrong passwords", pageAttacker)
}

func saveScreenshot(t *testing.T, ctx context.Context, path string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the status page: %s", path)
}

// crossSiteForm: a page on another port of the same host is the same site,
// so the browser sends the SameSite=Strict cookie with its form; the origin
// check and the CSRF token are what refuse it. The answer says which check
// stopped it: "no session" (401) would mean the cookie did not go along.
func crossSiteForm(t *testing.T, ctx context.Context, base string) {
	t.Helper()
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!doctype html><form id="f" method="post" action="%s/ui/bans">`+
			`<input name="ip" value="192.0.2.66"><input name="csrf" value="forged"></form>`+
			`<script>document.getElementById("f").submit()</script>`, base)
	}))
	defer evil.Close()
	step(t, ctx, 10*time.Second, "opening a page on another origin", chromedp.Navigate(evil.URL))
	deadline := time.Now().Add(10 * time.Second)
	for {
		loc, err := chromedp.Run(ctx, chromedp.Location())
		if err == nil && loc == base+"/ui/bans" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the other origin's form did not post to %s/ui/bans (location %q, %v)", base, loc, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	body, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil || !strings.Contains(body, "CSRF token missing or wrong") {
		t.Errorf("the answer to another origin's form = %q (%v), want the CSRF refusal", body, err)
	}
}

// watchConsole collects, from now on, the page's uncaught exceptions and
// what the browser blocked (a Content-Security-Policy violation: a style or
// script the page's own policy refuses). The refused requests the test makes
// on purpose log only "Failed to load resource", which is not collected.
func watchConsole(t *testing.T, ctx context.Context) (problems func() []string) {
	cctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	var mu sync.Mutex
	var found []string
	messages := chromedp.Console(cctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.IsException() || m.Source == "security" || strings.Contains(m.Text, "Content Security Policy") {
				mu.Lock()
				found = append(found, m.String())
				mu.Unlock()
			}
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(found)
	}
}
