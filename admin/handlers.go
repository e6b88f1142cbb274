package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/limiter"
)

// BanRequest is the body of POST /api/v1/bans.
type BanRequest struct {
	IP       string `json:"ip"`                 // an address; the ban covers its bans.source_prefix
	Duration string `json:"duration,omitempty"` // Go duration, e.g. "1h"; "" means bans.ban
	Reason   string `json:"reason,omitempty"`   // shown in ban lists; "" means "manual"
}

// Status is the body of answers that carry no data.
type Status struct {
	Status string `json:"status"`
}

const (
	maxBody   = 64 << 10
	maxReason = 200
)

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Status{"ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	switch {
	case s.draining():
		writeError(w, http.StatusServiceUnavailable, "not ready: draining, shutting down")
	case !s.ready():
		writeError(w, http.StatusServiceUnavailable, "not ready: no valid certificate loaded")
	default:
		writeJSON(w, http.StatusOK, Status{"ready"})
	}
}

func (s *Server) ready() bool { return !s.draining() && (s.o.Ready == nil || s.o.Ready()) }

func (s *Server) draining() bool { return s.o.Draining != nil && s.o.Draining() }

func (s *Server) listBans(w http.ResponseWriter, r *http.Request) {
	bans := nonNil(s.o.Bans.Bans())
	if s.o.InKernel == nil {
		writeJSON(w, http.StatusOK, bans)
		return
	}
	out := make([]BanView, len(bans))
	for i, b := range bans {
		out[i] = BanView{Ban: b, InKernel: s.o.InKernel(b.Prefix)}
	}
	writeJSON(w, http.StatusOK, out)
}

// BanView is a ban as GET /api/v1/bans shows it with a firewall configured:
// in_kernel says whether the kernel drops its packets (issue 15).
type BanView struct {
	limiter.Ban
	InKernel bool `json:"in_kernel"`
}

func (s *Server) addBan(w http.ResponseWriter, r *http.Request) {
	var req BanRequest
	if err := decodeJSON(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ip, d, err := req.parse()
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	// A ban that would not be enforced is a conflict with the config, not a
	// bad request: the operator changes bans.allow or bans.enabled, or
	// nothing (issue 11, point 6).
	if err := s.o.Bans.CheckBan(ip, d); err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, limiter.ErrNotEnforced) {
			code = http.StatusConflict
		}
		writeError(w, code, "ban of "+ip.String()+" refused: "+err.Error())
		return
	}
	b := s.o.Bans.AddBan(ip, d, req.Reason)
	s.o.Logger.Info("admin: ban added", "prefix", b.Prefix, "until", b.Until, "by", r.RemoteAddr)
	writeJSON(w, http.StatusCreated, b)
}

// parse checks a ban request: an address (not a prefix: the policy decides
// the prefix), a positive duration if any, a short printable reason.
func (req BanRequest) parse() (netip.Addr, time.Duration, error) {
	ip, err := netip.ParseAddr(strings.TrimSpace(req.IP))
	if err != nil || ip.Zone() != "" {
		return netip.Addr{}, 0, fmt.Errorf("ip: %q is not an IP address", req.IP)
	}
	var d time.Duration
	if req.Duration != "" {
		d, err = time.ParseDuration(req.Duration)
		if err != nil || d <= 0 {
			return netip.Addr{}, 0, fmt.Errorf("duration: %q is not a positive duration such as \"1h\"", req.Duration)
		}
	}
	if len(req.Reason) > maxReason || strings.ContainsFunc(req.Reason, unicode.IsControl) {
		return netip.Addr{}, 0, fmt.Errorf("reason: at most %d bytes of printable text", maxReason)
	}
	return ip, d, nil
}

func (s *Server) liftBan(w http.ResponseWriter, r *http.Request) {
	ip, err := pathAddr(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if !s.o.Bans.LiftBan(ip) {
		writeError(w, http.StatusNotFound, "no active ban covers "+ip.String())
		return
	}
	s.o.Logger.Info("admin: ban lifted", "ip", ip, "by", r.RemoteAddr)
	writeJSON(w, http.StatusOK, Status{"lifted"})
}

func (s *Server) source(w http.ResponseWriter, r *http.Request) {
	ip, err := pathAddr(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	in := s.o.Bans.Source(ip)
	if !known(in) {
		writeError(w, http.StatusNotFound, "the policy holds nothing about "+in.Prefix.String())
		return
	}
	writeJSON(w, http.StatusOK, in)
}

// known reports whether the policy has anything to say about a source beyond
// its defaults: an operator asking about an address that never connected gets
// 404 rather than a page of zeros.
func known(in limiter.SourceInfo) bool {
	return in.Allowed || in.Ban != nil || in.Strikes > 0 || in.Connections > 0 || in.Failures > 0
}

// pathAddr reads {ip}: an address, or a prefix as ban lists show it, which
// stands for the addresses it covers.
func pathAddr(r *http.Request) (netip.Addr, error) {
	v := r.PathValue("ip")
	if ip, err := netip.ParseAddr(v); err == nil && ip.Zone() == "" {
		return ip, nil
	}
	if p, err := netip.ParsePrefix(v); err == nil {
		return p.Masked().Addr(), nil
	}
	return netip.Addr{}, fmt.Errorf("%q is not an IP address or prefix", v)
}

func (s *Server) sessions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.sessionList())
}

// sessionList is the sessions, oldest first.
func (s *Server) sessionList() []SessionInfo {
	var list []SessionInfo
	if s.o.Sessions != nil {
		list = s.o.Sessions.Sessions()
	}
	slices.SortFunc(list, func(a, b SessionInfo) int {
		if c := a.Since.Compare(b.Since); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return nonNil(list)
}

func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	st, err := s.collectStats()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	if s.o.Reload == nil {
		writeError(w, http.StatusInternalServerError, "reload is not available in this process")
		return
	}
	s.o.Logger.Info("admin: reload requested", "by", r.RemoteAddr)
	if err := s.o.Reload(); err != nil {
		writeJSON(w, reloadStatus(err), reloadError(err))
		return
	}
	writeJSON(w, http.StatusOK, Status{"reloaded"})
}

// reloadStatus is 400 when the file is at fault (invalid or unreadable: the
// operator fixes it and retries) and 500 when applying it failed.
func reloadStatus(err error) int {
	var errs conf.Errors
	var one *conf.Error
	var path *fs.PathError
	if errors.As(err, &errs) || errors.As(err, &one) || errors.As(err, &path) {
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

func reloadError(err error) apiError {
	e := apiError{Error: "reload rejected, the running configuration stays: " + err.Error()}
	var errs conf.Errors
	if errors.As(err, &errs) {
		for _, c := range errs {
			e.Errors = append(e.Errors, c.Error())
		}
	}
	return e
}

// decodeJSON reads one JSON object of at most maxBody bytes, refusing unknown
// fields: a typo like "durtion" must not silently ban for the default time.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("body: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("body: one JSON object expected")
	}
	return nil
}

// nonNil makes empty lists encode as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
