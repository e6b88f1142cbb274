package backend

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/imapgw/imapgw/conf"
	proxyproto "github.com/pires/go-proxyproto"
)

// Conn is a backend connection after dial, optional PROXY header, TLS
// (implicit or STARTTLS) and the greeting: ready for the login. Caps are its
// pre-login capabilities (asked for if the greeting had none). Its deadline is
// still Dial's; the caller sets its own.
type Conn struct {
	net.Conn
	R    *bufio.Reader
	Caps []string
	// Server is the server it was dialed to.
	Server *Server
	// Connected is how long the TCP connect took (imapgw_backend_dial_seconds).
	Connected time.Duration
}

// ErrBackend marks an answer from the backend that makes no sense here.
var ErrBackend = errors.New("unexpected backend response")

// Dial opens a connection to s for a client at client, bounded by
// s.ConnectTimeout and ctx. With client_ip = proxy-v1/v2 it starts with a
// PROXY header naming client; for the zero AddrPort (health checks) the header
// is v2 LOCAL or v1 UNKNOWN, since a Dovecot listener with haproxy = yes
// requires one. The header's destination is the connection's own local
// address; DialFrom names the gateway address the client reached instead.
// The connection has no TCP keep-alive: the caller sets it on one it keeps.
func (s *Server) Dial(ctx context.Context, client netip.AddrPort) (*Conn, error) {
	return s.DialFrom(ctx, client, netip.AddrPort{})
}

// DialFrom is Dial with local, the gateway address the client connected to,
// as the PROXY header's destination (what the proxy's old dialer sent).
// Added to the POOL_API.md contract so that moving the dialer changes nothing
// Dovecot sees.
func (s *Server) DialFrom(ctx context.Context, client, local netip.AddrPort) (*Conn, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.ConnectTimeout)
	defer cancel()
	// No TCP keep-alive: a health check, or a session over within a
	// second, never needs it, and the caller sets it on a connection that
	// stays (package proxy, once a relayed session goes quiet): four
	// setsockopt calls fewer per such login.
	d := net.Dialer{KeepAlive: -1}
	nc, err := d.DialContext(ctx, "tcp", s.Address)
	if err != nil {
		return nil, fmt.Errorf("dialing backend %s: %w", s.Name, err)
	}
	c := &Conn{Conn: nc, Server: s, Connected: time.Since(start)}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	// A cancelled ctx (shutdown) interrupts the greeting too, not only the
	// connect and the TLS handshake.
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Now()) })
	defer stop()
	if err := c.open(ctx, client, local); err != nil {
		c.Conn.Close()
		return nil, fmt.Errorf("backend %s: %w", s.Name, err)
	}
	return c, nil
}

func (c *Conn) open(ctx context.Context, client, local netip.AddrPort) error {
	s := c.Server
	if err := c.sendProxyHeader(client, local); err != nil {
		return err
	}
	if s.TLS == conf.TLSImplicit {
		tc := tls.Client(c.Conn, s.tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fmt.Errorf("TLS: %w", err)
		}
		c.Conn = tc
	}
	c.R = bufio.NewReaderSize(c.Conn, 4096)
	if err := c.greeting(); err != nil {
		return err
	}
	if s.TLS == conf.TLSStartTLS {
		if err := c.startTLS(ctx); err != nil {
			return err
		}
	}
	if c.Caps == nil {
		if _, err := c.Capability(); err != nil {
			return err
		}
	}
	return nil
}

func (c *Conn) sendProxyHeader(client, local netip.AddrPort) error {
	var v byte
	switch c.Server.ClientIP {
	case conf.ClientIPProxyV1:
		v = 1
	case conf.ClientIPProxyV2:
		v = 2
	default:
		return nil
	}
	h := localHeader(v)
	if client.IsValid() {
		if !local.IsValid() {
			local = addrPort(c.Conn.LocalAddr())
		}
		h = proxyproto.HeaderProxyFromAddrs(v, net.TCPAddrFromAddrPort(client), sameFamily(client, local))
	}
	if _, err := h.WriteTo(c.Conn); err != nil {
		return fmt.Errorf("writing PROXY header: %w", err)
	}
	return nil
}

// localHeader is the PROXY header of a connection the gateway makes for
// itself (a health check): v2 LOCAL or v1 UNKNOWN, which a listener with
// haproxy = yes requires and which names no client.
func localHeader(v byte) *proxyproto.Header {
	return &proxyproto.Header{Version: v, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
}

// sameFamily returns local in client's address family: PROXY headers need one
// family, and an IPv6 listener may serve IPv4 clients.
func sameFamily(client, local netip.AddrPort) *net.TCPAddr {
	ca, la := client.Addr().Unmap(), local.Addr().Unmap()
	if ca.Is4() != la.Is4() {
		la = netip.IPv6Unspecified()
		if ca.Is4() {
			la = netip.IPv4Unspecified()
		}
	}
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(la, local.Port()))
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

func (c *Conn) greeting() error {
	line, err := NewReplyReader(c.R).Next()
	if err != nil {
		return fmt.Errorf("reading greeting: %w", err)
	}
	st := ParseReply(line)
	if st.Tag != "*" || st.Kind != "OK" {
		return fmt.Errorf("%w: greeting %q", ErrBackend, sanitize(line, 120))
	}
	if st.Code == "CAPABILITY" {
		c.Caps = strings.Fields(st.Args)
	}
	return nil
}

// command sends a command with no literals and waits for its tagged reply,
// keeping the capabilities of any untagged CAPABILITY.
func (c *Conn) command(tag, cmd string) error {
	if _, err := fmt.Fprintf(c.Conn, "%s %s\r\n", tag, cmd); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	rr := NewReplyReader(c.R)
	for {
		line, err := rr.Next()
		if err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
		st := ParseReply(line)
		switch {
		case st.Tag == tag && st.Kind != "OK":
			return fmt.Errorf("%w: %s: %s", ErrBackend, cmd, sanitize(st.String(), 120))
		case st.Tag == tag:
			return nil
		case st.Tag == "*" && st.Kind == "CAPABILITY":
			c.Caps = strings.Fields(line)[2:]
		case st.Tag == "*" && st.Kind == "BYE":
			return fmt.Errorf("%w: BYE %s", ErrBackend, sanitize(st.Text, 120))
		}
	}
}

// Capability asks the server for its capabilities, replacing Caps (proxy
// uses it after the login when the OK carried none).
func (c *Conn) Capability() ([]string, error) {
	c.Caps = nil
	err := c.command("gwc", "CAPABILITY")
	if err == nil && c.Caps == nil {
		err = fmt.Errorf("%w: no capabilities", ErrBackend)
	}
	return c.Caps, err
}

func (c *Conn) startTLS(ctx context.Context) error {
	if err := c.command("gws", "STARTTLS"); err != nil {
		return err
	}
	if c.R.Buffered() > 0 {
		return fmt.Errorf("%w: data after STARTTLS", ErrBackend)
	}
	tc := tls.Client(c.Conn, c.Server.tlsConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS: %w", err)
	}
	c.Conn, c.R, c.Caps = tc, bufio.NewReaderSize(tc, 4096), nil
	return nil
}

// Has reports whether the server advertised capability (case-insensitive).
func (c *Conn) Has(capability string) bool {
	for _, x := range c.Caps {
		if strings.EqualFold(x, capability) {
			return true
		}
	}
	return false
}

// logout ends a health check politely; its answer does not matter.
func (c *Conn) logout() {
	c.command("gwo", "LOGOUT")
}
