package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// route is one method and path of the API.
type route struct {
	method, path string
	public       bool // served without the token (probes)
	h            http.HandlerFunc
}

func (s *Server) table() []route {
	pprofRoute := route{"GET", "/debug/pprof/{name...}", false, profiles}
	if s.token == nil {
		// Profiles show user names and addresses in memory; without a token
		// any local process, or a page that reached the port, could fetch them.
		pprofRoute.h = func(w http.ResponseWriter, r *http.Request) {
			writeError(w, http.StatusForbidden, "/debug/pprof is served only with admin.token_file set")
		}
	}
	return []route{
		{"GET", "/healthz", true, s.healthz},
		{"GET", "/readyz", true, s.readyz},
		{"GET", "/metrics", false, s.metrics()},
		{"GET", "/api/v1/bans", false, s.listBans},
		{"POST", "/api/v1/bans", false, s.addBan},
		// {ip...}: a prefix as `bans list` shows it ("2001:db8::/64") works
		// unescaped too.
		{"DELETE", "/api/v1/bans/{ip...}", false, s.liftBan},
		{"GET", "/api/v1/sources/{ip...}", false, s.source},
		{"GET", "/api/v1/sessions", false, s.sessions},
		{"GET", "/api/v1/stats", false, s.stats},
		{"POST", "/api/v1/reload", false, s.reload},
		{"GET", "/api/v1/backends", false, s.needBackends(s.listBackends)},
		{"POST", "/api/v1/backends/{name}/drain", false, s.needBackends(s.drainBackend)},
		{"POST", "/api/v1/backends/{name}/undrain", false, s.needBackends(s.undrainBackend)},
		{"GET", "/api/v1/users/{user}", false, s.needBackends(s.where)},
		{"POST", "/api/v1/users/{user}/move", false, s.needBackends(s.move)},
		{"POST", "/api/v1/users/{user}/kick", false, s.needBackends(s.kick)},
		{"GET", "/api/v1/cluster", false, s.cluster},
		// Go's profiler, behind the token: heap and CPU profiles of a live gateway
		// are how its memory per session and its CPU are explained.
		pprofRoute,
	}
}

// routes registers each route and, for each path, a method-less pattern after
// it: ServeMux prefers the method patterns, so that one only sees the other
// methods and answers 405 in JSON (the mux's own 405 is plain text).
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	allow := map[string][]string{}
	public := map[string]bool{}
	for _, r := range s.table() {
		h := r.h
		if changesState(r.method) {
			h = needJSON(h)
		}
		mux.Handle(r.method+" "+r.path, s.guard(r.public, h))
		allow[r.path] = append(allow[r.path], r.method)
		public[r.path] = r.public
	}
	for path, methods := range allow {
		if slices.Contains(methods, "GET") {
			methods = append(methods, "HEAD") // a GET pattern matches HEAD too
		}
		mux.Handle(path, s.guard(public[path], methodNotAllowed(methods)))
	}
	s.uiRoutes(mux)
	mux.Handle("/", s.guard(false, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such route: "+r.URL.Path)
	}))
	return mux
}

// profiles serves net/http/pprof: the index and named profiles, and the CPU
// profile and execution trace, which have handlers of their own.
func profiles(w http.ResponseWriter, r *http.Request) {
	switch r.PathValue("name") {
	case "profile":
		pprof.Profile(w, r)
	case "trace":
		pprof.Trace(w, r)
	default:
		pprof.Index(w, r)
	}
}

func methodNotAllowed(methods []string) http.HandlerFunc {
	allow := strings.Join(methods, ", ")
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, r.Method+" not allowed; allowed: "+allow)
	}
}

// needJSON answers 415 unless the request says Content-Type: application/json
// (issue 11, point 5: no state change from a plain form or text POST).
func needJSON(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !isJSON(r) {
			writeError(w, http.StatusUnsupportedMediaType,
				r.Method+" needs Content-Type: application/json (body or not)")
			return
		}
		h(w, r)
	}
}

// guard requires the bearer token on non-public routes when one is configured.
func (s *Server) guard(public bool, h http.HandlerFunc) http.Handler {
	if public || s.token == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="imapgw"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		h(w, r)
	})
}

// authorized compares digests of the tokens in constant time, so neither the
// content nor the length of the token leaks through timing.
func (s *Server) authorized(r *http.Request) bool {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	return subtle.ConstantTimeCompare(digest(strings.TrimSpace(tok)), s.token) == 1
}

func digest(token string) []byte {
	d := sha256.Sum256([]byte(token))
	return d[:]
}

func (s *Server) metrics() http.HandlerFunc {
	g := s.o.Gatherer
	if g == nil {
		g = prometheus.NewRegistry()
	}
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(s.o.Logger.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	}).ServeHTTP
}

// apiError is the body of every error answer.
type apiError struct {
	Error  string   `json:"error"`
	Errors []string `json:"errors,omitempty"` // each problem of an invalid config
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, apiError{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v) // the status is sent; a failed write has no one to tell
}
