package admin

import (
	"errors"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Backends is the part of the backend pool the endpoint reads and changes.
// Package main adapts *backend.Pool to it: admin does not import backend's
// data-path types, and nothing on the data path imports admin.
type Backends interface {
	Servers() []BackendInfo
	// Drain stops new logins to the server name; kick also closes its
	// sessions. ErrUnknownBackend for a name the pool does not hold.
	Drain(name string, kick bool) error
	// Undrain resumes new logins to name; ErrUnknownBackend as Drain.
	Undrain(name string) error
	Where(user string) UserInfo
	// Move closes user's sessions and pins it to name; ErrUnknownBackend as Drain.
	Move(user, name string) error
	// Kick closes user's sessions and says how many.
	Kick(user string) int
}

// ErrUnknownBackend is what a Backends method returns (or wraps) for a server
// name the pool does not hold: the endpoint answers 404.
var ErrUnknownBackend = errors.New("no such backend server")

// BackendInfo describes one server of the pool.
type BackendInfo struct {
	Name         string    `json:"name"`
	Address      string    `json:"address"`
	Weight       int       `json:"weight"`
	State        string    `json:"state"` // "up", "down" or "draining"
	Sessions     int       `json:"sessions"`
	LastCheck    time.Time `json:"last_check"`           // zero before the first check
	LastError    string    `json:"last_error,omitempty"` // of the last check, "" when it passed
	Capabilities []string  `json:"capabilities"`         // pre-login, from the last good check
}

// UserInfo says where a user's next login goes and why, and its sessions.
type UserInfo struct {
	User     string        `json:"user"`
	Backend  string        `json:"backend"` // "" when no server is up
	Reason   string        `json:"reason"`  // "affinity", "map", "hash", "first", "moved"
	Pinned   string        `json:"pinned,omitempty"`
	Until    time.Time     `json:"until,omitzero"` // affinity expiry once no session is open
	Open     int           `json:"open_sessions"`  // the pool's count of its relayed sessions
	Sessions []SessionInfo `json:"sessions"`       // its sessions from the session list, oldest first
}

// DrainRequest is the optional body of POST /api/v1/backends/{name}/drain.
type DrainRequest struct {
	Kick bool `json:"kick,omitempty"` // also close the server's sessions
}

// DrainResult answers drain and undrain.
type DrainResult struct {
	Status  string `json:"status"` // "draining" or "undrained"
	Backend string `json:"backend"`
	Kick    bool   `json:"kick,omitempty"`
}

// MoveRequest is the body of POST /api/v1/users/{user}/move.
type MoveRequest struct {
	Backend string `json:"backend"`
}

// UserResult answers move and kick.
type UserResult struct {
	Status  string `json:"status"` // "moved" or "kicked"
	User    string `json:"user"`
	Backend string `json:"backend,omitempty"` // move: where it is pinned
	Closed  int    `json:"closed"`            // sessions closed
}

// maxUser bounds a user name in a path: IMAP user names are short, and the
// name ends up in log lines.
const maxUser = 256

func (s *Server) listBackends(w http.ResponseWriter, r *http.Request) {
	list := s.o.Backends.Servers()
	for i := range list {
		list[i].Capabilities = nonNil(list[i].Capabilities)
	}
	writeJSON(w, http.StatusOK, nonNil(list))
}

func (s *Server) drainBackend(w http.ResponseWriter, r *http.Request) {
	var req DrainRequest
	if r.ContentLength != 0 { // the body is optional: no body means no kick
		if err := decodeJSON(w, r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	name := r.PathValue("name")
	if err := s.o.Backends.Drain(name, req.Kick); err != nil {
		writeBackendError(w, name, err)
		return
	}
	s.o.Logger.Info("admin: backend drained", "backend", name, "kick", req.Kick, "by", r.RemoteAddr)
	writeJSON(w, http.StatusOK, DrainResult{Status: "draining", Backend: name, Kick: req.Kick})
}

func (s *Server) undrainBackend(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := s.o.Backends.Undrain(name); err != nil {
		writeBackendError(w, name, err)
		return
	}
	s.o.Logger.Info("admin: backend undrained", "backend", name, "by", r.RemoteAddr)
	writeJSON(w, http.StatusOK, DrainResult{Status: "undrained", Backend: name})
}

func (s *Server) where(w http.ResponseWriter, r *http.Request) {
	user, ok := pathUser(w, r)
	if !ok {
		return
	}
	in := s.o.Backends.Where(user)
	in.Sessions = s.userSessions(user)
	writeJSON(w, http.StatusOK, in)
}

// userSessions is user's sessions from the session list (user names compare
// case-insensitively, as the pool routes them).
func (s *Server) userSessions(user string) []SessionInfo {
	var out []SessionInfo
	for _, si := range s.sessionList() {
		if si.State == "relaying" && strings.EqualFold(si.User, user) {
			out = append(out, si)
		}
	}
	return nonNil(out)
}

func (s *Server) move(w http.ResponseWriter, r *http.Request) {
	user, ok := pathUser(w, r)
	if !ok {
		return
	}
	var req MoveRequest
	if err := decodeJSON(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Backend == "" {
		writeError(w, http.StatusBadRequest, `body: "backend" is required: the server to pin the user to`)
		return
	}
	closed := s.o.Backends.Where(user).Open
	if err := s.o.Backends.Move(user, req.Backend); err != nil {
		writeBackendError(w, req.Backend, err)
		return
	}
	s.o.Logger.Info("admin: user moved", "user", user, "backend", req.Backend, "sessions", closed, "by", r.RemoteAddr)
	writeJSON(w, http.StatusOK, UserResult{Status: "moved", User: user, Backend: req.Backend, Closed: closed})
}

func (s *Server) kick(w http.ResponseWriter, r *http.Request) {
	user, ok := pathUser(w, r)
	if !ok {
		return
	}
	n := s.o.Backends.Kick(user)
	s.o.Logger.Info("admin: user kicked", "user", user, "sessions", n, "by", r.RemoteAddr)
	writeJSON(w, http.StatusOK, UserResult{Status: "kicked", User: user, Closed: n})
}

// pathUser reads {user}: printable, bounded; it answers 400 otherwise.
func pathUser(w http.ResponseWriter, r *http.Request) (string, bool) {
	u := r.PathValue("user")
	if u == "" || len(u) > maxUser || !utf8.ValidString(u) || strings.ContainsFunc(u, unicode.IsControl) {
		writeError(w, http.StatusBadRequest, "user: 1 to 256 bytes of printable text expected")
		return "", false
	}
	return u, true
}

func writeBackendError(w http.ResponseWriter, name string, err error) {
	if errors.Is(err, ErrUnknownBackend) {
		writeError(w, http.StatusNotFound, "no backend server named "+quote(name))
		return
	}
	writeError(w, http.StatusInternalServerError, err.Error())
}

func quote(s string) string { return `"` + s + `"` }

// needBackends answers 501 when the process has no pool to show (tests and
// embedders that build the endpoint without one).
func (s *Server) needBackends(h http.HandlerFunc) http.HandlerFunc {
	if s.o.Backends != nil {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotImplemented, "no backend pool in this process")
	}
}
