package backend

import (
	"context"
	"crypto/tls"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
	proxyproto "github.com/pires/go-proxyproto"
)

// dialServer builds the one server of a pool from b and dials it.
func dialServer(t *testing.T, b conf.Backend, client netip.AddrPort) (*Conn, error) {
	t.Helper()
	p, _ := newPool(t, b, nil)
	c, err := p.servers[0].Dial(context.Background(), client)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func TestDialGreeting(t *testing.T) {
	withCaps := newGreeter(t, "* OK [CAPABILITY IMAP4rev1 SASL-IR ID] ready")
	c, err := dialServer(t, backendConf(conf.BackendServer{Name: "x", Address: withCaps.addr(), Weight: 1}), netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Caps, []string{"IMAP4rev1", "SASL-IR", "ID"}) || !c.Has("sasl-ir") || c.Has("STARTTLS") {
		t.Errorf("Caps = %q, want the greeting's", c.Caps)
	}
	if _, cmds := withCaps.seen(); len(cmds) != 0 {
		t.Errorf("commands sent = %q, want none (the greeting had the capabilities)", cmds)
	}

	bare := newGreeter(t, "* OK ready")
	c, err = dialServer(t, backendConf(conf.BackendServer{Name: "x", Address: bare.addr(), Weight: 1}), netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Caps, []string{"IMAP4rev1", "AUTH=PLAIN"}) {
		t.Errorf("Caps = %q, want the CAPABILITY answer", c.Caps)
	}
	if _, cmds := bare.seen(); !slices.Equal(cmds, []string{"CAPABILITY"}) {
		t.Errorf("commands = %q, want CAPABILITY", cmds)
	}
}

// TestDialFailures: every way a backend can fail a dial is an error, within
// connect_timeout, and the greeting is read within the reply bound.
func TestDialFailures(t *testing.T) {
	refused := newGreeter(t, "* OK")
	refused.close()
	tests := []struct {
		name, greeting, addr, want string
	}{
		{name: "refused", addr: refused.addr(), want: "connection refused"},
		{name: "never greets", greeting: "", want: "timeout"},
		{name: "BYE", greeting: "* BYE too busy", want: `greeting "* BYE too busy"`},
		{name: "tagged", greeting: "a1 OK hello", want: "greeting"},
		{name: "huge greeting", greeting: "* OK " + strings.Repeat("x", 70<<10), want: "too long"},
		{name: "huge literal", greeting: "* OK {99999999}", want: "too long"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := tc.addr
			if addr == "" {
				addr = newGreeter(t, tc.greeting).addr()
			}
			b := backendConf(conf.BackendServer{Name: "x", Address: addr, Weight: 1})
			b.ConnectTimeout = conf.D(300 * time.Millisecond)
			start := time.Now()
			_, err := dialServer(t, b, netip.AddrPort{})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "backend x") {
				t.Errorf("Dial = %v, want an error naming backend x and %q", err, tc.want)
			}
			if el := time.Since(start); el > 2*time.Second {
				t.Errorf("Dial took %v, connect_timeout is 300ms", el)
			}
		})
	}
	_, err := dialServer(t, backendConf(conf.BackendServer{Name: "x", Address: newGreeter(t, "* NO go away").addr(), Weight: 1}), netip.AddrPort{})
	if !errors.Is(err, ErrBackend) {
		t.Errorf("Dial to a NO greeting = %v, want ErrBackend", err)
	}
}

// TestDialProxyHeader: with client_ip = proxy-v1/v2 the header names the
// client (and DialFrom's local address); a health check (no client) sends
// v2 LOCAL / v1 UNKNOWN.
func TestDialProxyHeader(t *testing.T) {
	client := netip.MustParseAddrPort("192.0.2.7:40001")
	local := netip.MustParseAddrPort("198.51.100.1:993")
	for _, mode := range []string{conf.ClientIPProxyV2, conf.ClientIPProxyV1} {
		g := newGreeter(t, "* OK [CAPABILITY IMAP4rev1] hi", withProxy)
		b := backendConf(conf.BackendServer{Name: "x", Address: g.addr(), Weight: 1, ClientIP: mode})
		p, _ := newPool(t, b, nil)
		s := p.servers[0]
		for _, dial := range []func() (*Conn, error){
			func() (*Conn, error) { return s.Dial(context.Background(), client) },
			func() (*Conn, error) { return s.DialFrom(context.Background(), client, local) },
			func() (*Conn, error) { return s.Dial(context.Background(), netip.AddrPort{}) },
		} {
			c, err := dial()
			if err != nil {
				t.Fatalf("%s: %v", mode, err)
			}
			c.Close()
		}
		hs, _ := g.seen()
		if len(hs) != 3 {
			t.Fatalf("%s: %d headers", mode, len(hs))
		}
		if src, ok := hs[0].SourceAddr.(interface{ String() string }); !ok || src.String() != client.String() || hs[0].Command != proxyproto.PROXY {
			t.Errorf("%s: header %+v, want source %s", mode, hs[0], client)
		}
		if hs[1].DestinationAddr.String() != local.String() {
			t.Errorf("%s: DialFrom's header destination %v, want %s", mode, hs[1].DestinationAddr, local)
		}
		if hs[2].Command != proxyproto.LOCAL {
			t.Errorf("%s: health-check header %+v, want LOCAL", mode, hs[2])
		}
	}
}

// TestDialTLS: a per-server tls mode and tls_server_name override [backend]'s;
// the CA comes from [backend].tls_ca_file; STARTTLS drops the plain-text
// capabilities and asks again over TLS.
func TestDialTLS(t *testing.T) {
	ca := testbed.NewCA(t)
	caFile := ca.WritePEM(t, t.TempDir())
	cert := ca.Leaf(t, "imap.test")
	srvConf := &tls.Config{Certificates: []tls.Certificate{cert}}

	st := newGreeter(t, "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] hi", withTLS(srvConf))
	b := backendConf(conf.BackendServer{Name: "st", Address: st.addr(), Weight: 1, TLS: conf.TLSStartTLS, TLSServerName: "imap.test"})
	b.TLSCAFile = caFile
	c, err := dialServer(t, b, netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Conn.(*tls.Conn); !ok || c.Has("STARTTLS") || c.Has("LOGINDISABLED") || !c.Has("AUTH=PLAIN") {
		t.Errorf("after STARTTLS: %T, caps %q", c.Conn, c.Caps)
	}
	if _, cmds := st.seen(); !slices.Equal(cmds, []string{"STARTTLS", "CAPABILITY"}) {
		t.Errorf("commands = %q", cmds)
	}

	// The wrong name fails verification: the setting is used.
	b.Server[0].TLSServerName = "other.test"
	if _, err := dialServer(t, b, netip.AddrPort{}); err == nil || !strings.Contains(err.Error(), "TLS") {
		t.Errorf("STARTTLS to the wrong name = %v, want a TLS error", err)
	}
	skip := true
	b.Server[0].TLSSkipVerify = &skip
	b.TLSCAFile = ""
	if _, err := dialServer(t, b, netip.AddrPort{}); err != nil {
		t.Errorf("with tls_skip_verify on the server: %v", err)
	}
}

// TestDialImplicitTLS: implicit TLS before the greeting.
func TestDialImplicitTLS(t *testing.T) {
	ca := testbed.NewCA(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, "127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] tls\r\n"))
			defer c.Close()
		}
	}()
	b := backendConf(conf.BackendServer{Name: "tls", Address: ln.Addr().String(), Weight: 1})
	b.TLS, b.TLSCAFile = conf.TLSImplicit, ca.WritePEM(t, t.TempDir())
	c, err := dialServer(t, b, netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Conn.(*tls.Conn); !ok || !c.Has("AUTH=PLAIN") {
		t.Errorf("implicit TLS: %T, caps %q", c.Conn, c.Caps)
	}
}
