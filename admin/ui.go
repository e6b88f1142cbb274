package admin

import (
	"bytes"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/imapgw/imapgw/limiter"
)

// The status page (issue 17, DESIGN.md "GET / (and /ui/…)"): one server-
// rendered page, its CSS and a few lines of script embedded in the binary,
// nothing fetched from elsewhere. Its forms post to /ui/…, never to /api/v1,
// which stays JSON-only.

// uiState is what the status page keeps between requests.
type uiState struct {
	key      []byte        // signs session cookies and CSRF tokens; made at start
	logins   loginRing     // per-minute login outcomes
	stop     chan struct{} // closed by Shutdown: ends the login sampler
	stopOnce sync.Once
}

func newUIState() uiState {
	return uiState{key: newUIKey(), stop: make(chan struct{})}
}

// uiRefresh is how often the page re-fetches its live part.
const uiRefresh = 2 * time.Second

//go:embed ui
var uiFiles embed.FS

var uiTemplates = template.Must(template.New("").Funcs(template.FuncMap{
	"ago":  ago,
	"left": left,
	"days": func(sec int64) int64 { return sec / 86400 },
}).ParseFS(uiFiles, "ui/*.html"))

// uiHeaders are set on every page answer: no caching of operator data, no
// framing (clickjacking of the lift button), and a policy that only lets the
// page load its own files and talk to its own origin.
func uiHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	// same-origin, not no-referrer: with no-referrer Chromium sends
	// "Origin: null" on the page's own form posts, which sameOrigin refuses.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; script-src 'self'; "+
		"connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
}

// uiRoutes registers the page. Its routes check the session cookie, not the
// bearer header: guard does not wrap them.
func (s *Server) uiRoutes(mux *http.ServeMux) {
	static, _ := fs.Sub(uiFiles, "ui/static")
	mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /{$}", s.page)
	mux.HandleFunc("GET /ui/live", s.live)
	mux.HandleFunc("POST /ui/login", s.uiLogin)
	mux.HandleFunc("POST /ui/logout", s.uiAction(s.uiLogout))
	mux.HandleFunc("POST /ui/bans", s.uiAction(s.uiBan))
	mux.HandleFunc("POST /ui/bans/lift", s.uiAction(s.uiLift))
}

// page serves GET /: the login form without a valid session when a token is
// configured (401), else the status page. Without a token (loopback only) the
// first visit gets a session cookie at once: it still anchors the CSRF token.
func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	uiHeaders(w)
	sid, ok := s.session(r)
	if !ok && s.token != nil {
		s.renderLogin(w, http.StatusUnauthorized, "")
		return
	}
	if !ok {
		var c *http.Cookie
		c, sid = s.newSession(s.o.Now())
		http.SetCookie(w, c)
	}
	v := s.view(sid)
	v.Flash = s.takeFlash(w, r)
	s.render(w, http.StatusOK, "page", v)
}

// live serves the page's refreshing part as an HTML fragment.
func (s *Server) live(w http.ResponseWriter, r *http.Request) {
	uiHeaders(w)
	sid, ok := s.session(r)
	if !ok {
		http.Error(w, "no session: log in again", http.StatusUnauthorized)
		return
	}
	s.render(w, http.StatusOK, "live", s.view(sid))
}

func (s *Server) renderLogin(w http.ResponseWriter, code int, msg string) {
	s.render(w, code, "login", struct{ Error string }{msg})
}

// render executes a template into a buffer first, so that a failure is a 500
// rather than half a page.
func (s *Server) render(w http.ResponseWriter, code int, name string, data any) {
	var buf bytes.Buffer
	if err := uiTemplates.ExecuteTemplate(&buf, name, data); err != nil {
		s.o.Logger.Error("admin: rendering the status page", "template", name, "err", err)
		http.Error(w, "rendering the page failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

func (s *Server) uiLogin(w http.ResponseWriter, r *http.Request) {
	uiHeaders(w)
	if s.token == nil {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if !sameOrigin(r) {
		s.o.Logger.Warn("admin: status page login refused", "ip", remoteIP(r), "outcome", "other_origin")
		http.Error(w, "login form posted from another origin", http.StatusForbidden)
		return
	}
	if r.ParseForm() != nil || !s.tokenMatches(r.PostForm.Get("token")) {
		s.o.Logger.Warn("admin: status page login refused", "ip", remoteIP(r), "outcome", "wrong_token")
		s.renderLogin(w, http.StatusUnauthorized, "Wrong token.")
		return
	}
	c, _ := s.newSession(s.o.Now())
	http.SetCookie(w, c)
	s.o.Logger.Info("admin: status page login", "ip", remoteIP(r), "outcome", "ok")
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// uiAction wraps a state-changing form: a valid session cookie (401), the
// same origin and the session's CSRF token (403), a small form body.
func (s *Server) uiAction(h func(w http.ResponseWriter, r *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		uiHeaders(w)
		sid, ok := s.session(r)
		if !ok {
			http.Error(w, "no session: open / and log in", http.StatusUnauthorized)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		if !sameOrigin(r) || !s.validCSRF(sid, r.PostForm.Get("csrf")) {
			s.o.Logger.Warn("admin: status page action refused: CSRF token or origin", "ip", remoteIP(r), "path", r.URL.Path)
			http.Error(w, "CSRF token missing or wrong: reload the page", http.StatusForbidden)
			return
		}
		h(w, r)
	}
}

func (s *Server) uiLogout(w http.ResponseWriter, r *http.Request) {
	s.clearCookie(w, sessionCookie)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// uiBan is the ban form: the same checks as POST /api/v1/bans.
func (s *Server) uiBan(w http.ResponseWriter, r *http.Request) {
	req := BanRequest{IP: r.PostForm.Get("ip"), Duration: r.PostForm.Get("duration"), Reason: r.PostForm.Get("reason")}
	ip, d, err := req.parse()
	if err == nil {
		err = s.o.Bans.CheckBan(ip, d)
	}
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, limiter.ErrNotEnforced) {
			code = http.StatusConflict
		}
		sid, _ := s.session(r)
		v := s.view(sid)
		v.Flash = &flash{Kind: "error", Text: "Ban refused: " + err.Error()}
		v.Form = req // the operator corrects it rather than retyping it
		uiHeaders(w)
		s.render(w, code, "page", v)
		return
	}
	b := s.o.Bans.AddBan(ip, d, req.Reason)
	s.o.Logger.Info("admin: ban added", "prefix", b.Prefix, "until", b.Until, "by", r.RemoteAddr, "via", "status page")
	s.setFlash(w, flash{"ok", "Banned " + b.Prefix.String() + " until " + b.Until.UTC().Format(time.DateTime) + " UTC."})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) uiLift(w http.ResponseWriter, r *http.Request) {
	ip, err := netip.ParseAddr(r.PostForm.Get("ip"))
	switch {
	case err != nil || ip.Zone() != "":
		s.setFlash(w, flash{"error", "Not an IP address."})
	case !s.o.Bans.LiftBan(ip):
		s.setFlash(w, flash{"error", "No active ban covers " + ip.String() + "."})
	default:
		s.o.Logger.Info("admin: ban lifted", "ip", ip, "by", r.RemoteAddr, "via", "status page")
		s.setFlash(w, flash{"ok", "Lifted the ban of " + ip.String() + "."})
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func remoteIP(r *http.Request) string {
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().String()
	}
	return r.RemoteAddr
}
