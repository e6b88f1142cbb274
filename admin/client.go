package admin

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/imapgw/imapgw/limiter"
)

// Client calls an admin endpoint, for `imapgw bans`, `backends`, `users` and
// `status`.
type Client struct {
	base  string // "http://host:port"
	token string
	http  *http.Client
}

// APIError is an error answer of the endpoint.
type APIError struct {
	Status  int      // HTTP status code
	Message string   // the answer's "error"
	Errors  []string // each problem of an invalid config, on reload
}

func (e *APIError) Error() string {
	return fmt.Sprintf("admin endpoint: %s (HTTP %d)", e.Message, e.Status)
}

// NewClient returns a client for the endpoint at address (admin.address: a
// host:port, or an http:// URL). A wildcard or empty host means the endpoint
// listens on every interface; the client then calls it over loopback.
// token "" sends no Authorization header.
func NewClient(address, token string) (*Client, error) {
	return NewClientTLS(address, token, nil)
}

// NewClientTLS is NewClient speaking HTTPS with tlsConf (see ClientTLS) when
// it is not nil; an https:// address without tlsConf verifies against the
// system roots.
func NewClientTLS(address, token string, tlsConf *tls.Config) (*Client, error) {
	base, err := baseURL(address)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if tlsConf != nil {
		base = "https://" + strings.TrimPrefix(strings.TrimPrefix(base, "http://"), "https://")
		tr.TLSClientConfig = tlsConf
	}
	return &Client{base: base, token: token, http: &http.Client{Timeout: 30 * time.Second, Transport: tr}}, nil
}

func baseURL(address string) (string, error) {
	if strings.Contains(address, "://") {
		u, err := url.Parse(address)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", fmt.Errorf("admin address %q: want host:port or an http(s) URL", address)
		}
		return strings.TrimRight(u.String(), "/"), nil
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return "", fmt.Errorf("admin address %q: %w", address, err)
	}
	if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if err == nil && ip.Is6() {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// Health calls /healthz.
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, "GET", "/healthz", nil, nil)
}

// Ready calls /readyz; an *APIError with Status 503 means not ready.
func (c *Client) Ready(ctx context.Context) error {
	return c.do(ctx, "GET", "/readyz", nil, nil)
}

// Bans lists the active bans.
func (c *Client) Bans(ctx context.Context) ([]limiter.Ban, error) {
	var out []limiter.Ban
	return out, c.do(ctx, "GET", "/api/v1/bans", nil, &out)
}

// AddBan bans ip's source prefix for d (0: the gateway's bans.ban).
func (c *Client) AddBan(ctx context.Context, ip string, d time.Duration, reason string) (limiter.Ban, error) {
	req := BanRequest{IP: ip, Reason: reason}
	if d != 0 {
		req.Duration = d.String()
	}
	var out limiter.Ban
	return out, c.do(ctx, "POST", "/api/v1/bans", req, &out)
}

// LiftBan lifts the ban covering ip (an address or a listed prefix); an
// *APIError with Status 404 means none does.
func (c *Client) LiftBan(ctx context.Context, ip string) error {
	return c.do(ctx, "DELETE", "/api/v1/bans/"+url.PathEscape(ip), nil, nil)
}

// Source reports what the policy knows about ip.
func (c *Client) Source(ctx context.Context, ip string) (limiter.SourceInfo, error) {
	var out limiter.SourceInfo
	return out, c.do(ctx, "GET", "/api/v1/sources/"+url.PathEscape(ip), nil, &out)
}

// Sessions lists the active sessions, oldest first.
func (c *Client) Sessions(ctx context.Context) ([]SessionInfo, error) {
	var out []SessionInfo
	return out, c.do(ctx, "GET", "/api/v1/sessions", nil, &out)
}

// Stats returns the counters.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	var out Stats
	return out, c.do(ctx, "GET", "/api/v1/stats", nil, &out)
}

// Reload asks the gateway to reload its config file.
func (c *Client) Reload(ctx context.Context) error {
	return c.do(ctx, "POST", "/api/v1/reload", nil, nil)
}

// Backends lists the servers of the backend pool.
func (c *Client) Backends(ctx context.Context) ([]BackendInfo, error) {
	var out []BackendInfo
	return out, c.do(ctx, "GET", "/api/v1/backends", nil, &out)
}

// Drain stops new logins to the server name; kick also closes its sessions.
// An *APIError with Status 404 means no such server.
func (c *Client) Drain(ctx context.Context, name string, kick bool) (DrainResult, error) {
	var out DrainResult
	return out, c.do(ctx, "POST", "/api/v1/backends/"+url.PathEscape(name)+"/drain", DrainRequest{Kick: kick}, &out)
}

// Undrain resumes new logins to the server name.
func (c *Client) Undrain(ctx context.Context, name string) (DrainResult, error) {
	var out DrainResult
	return out, c.do(ctx, "POST", "/api/v1/backends/"+url.PathEscape(name)+"/undrain", nil, &out)
}

// Where says where user's next login goes and why, and lists its sessions.
func (c *Client) Where(ctx context.Context, user string) (UserInfo, error) {
	var out UserInfo
	return out, c.do(ctx, "GET", "/api/v1/users/"+url.PathEscape(user), nil, &out)
}

// Move closes user's sessions and pins it to the server name.
func (c *Client) Move(ctx context.Context, user, name string) (UserResult, error) {
	var out UserResult
	return out, c.do(ctx, "POST", "/api/v1/users/"+url.PathEscape(user)+"/move", MoveRequest{Backend: name}, &out)
}

// Kick closes user's sessions.
func (c *Client) Kick(ctx context.Context, user string) (UserResult, error) {
	var out UserResult
	return out, c.do(ctx, "POST", "/api/v1/users/"+url.PathEscape(user)+"/kick", nil, &out)
}

// do sends in (if not nil) as JSON and decodes a 2xx answer into out (if not
// nil); any other answer becomes an *APIError.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil || changesState(method) {
		// The endpoint refuses a state change without it, body or not.
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("calling the admin endpoint: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("reading the admin endpoint's answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		return answerError(resp.StatusCode, data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decoding the admin endpoint's answer: %w", err)
	}
	return nil
}

func answerError(code int, data []byte) error {
	var e apiError
	if err := json.Unmarshal(data, &e); err != nil || e.Error == "" {
		e.Error = http.StatusText(code)
	}
	return &APIError{Status: code, Message: e.Error, Errors: e.Errors}
}

// IsStatus reports whether err is an answer of the endpoint with this status.
func IsStatus(err error, status int) bool {
	var e *APIError
	return errors.As(err, &e) && e.Status == status
}
