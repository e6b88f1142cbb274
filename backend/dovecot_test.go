package backend

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

// TestDovecotChecks: health checks and Dial against a real Dovecot, on each
// of its listeners: STARTTLS, implicit TLS, and a haproxy = yes listener that
// needs a PROXY header on every connection (LOCAL for the checks).
func TestDovecotChecks(t *testing.T) {
	d := testbed.StartDovecot(t, testbed.DovecotOptions{TLS: true})
	b := backendConf(
		conf.BackendServer{Name: "starttls", Address: d.Addr, Weight: 100, TLS: conf.TLSStartTLS, TLSServerName: "localhost"},
		conf.BackendServer{Name: "implicit", Address: d.TLSAddr, Weight: 100, TLS: conf.TLSImplicit, TLSServerName: "localhost"},
		conf.BackendServer{Name: "haproxy", Address: d.ProxyAddr, Weight: 100, ClientIP: conf.ClientIPProxyV2},
	)
	b.TLSCAFile = d.CA.WritePEM(t, t.TempDir())
	b.CheckInterval, b.CheckTimeout = conf.D(100*time.Millisecond), conf.D(2*time.Second)
	p, logs := newPool(t, b, nil)
	runPool(t, p)
	waitFor(t, 5*time.Second, "every server checked", func() bool {
		for _, st := range p.Servers() {
			if st.LastCheck.IsZero() {
				return false
			}
		}
		return true
	})
	for _, st := range p.Servers() {
		if st.State != "up" || st.LastError != "" || !slices.Contains(st.Capabilities, "IMAP4rev1") {
			t.Errorf("%s: %+v\nlog:\n%s", st.Name, st, logs)
		}
		if st.Name == "starttls" && slices.Contains(st.Capabilities, "STARTTLS") {
			t.Errorf("starttls: capabilities %q are the plain-text ones", st.Capabilities)
		}
	}

	// A login's dial through the haproxy listener names the client.
	c, err := p.byName["haproxy"].Dial(context.Background(), netip.MustParseAddrPort("192.0.2.7:40001"))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.logout()
	c.Close()
	d.WaitLog(t, "rip=192.0.2.7", 5*time.Second)
}
