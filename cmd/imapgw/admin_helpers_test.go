package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/imapgw/imapgw/admin"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/demo"
	"github.com/imapgw/imapgw/internal/testbed"
)

// adminEnv is a running gateway in front of the in-memory backend, with its
// admin endpoint on loopback behind a token.
type adminEnv struct {
	g         *gateway
	adm       *admin.Server
	addr      string // admin endpoint host:port
	token     string
	tokenFile string
	imaps     string // the implicit-TLS listener
	logs      *testbed.LogBuffer
}

// startDemoBackend runs the in-memory IMAP server with user demo/demo.
func startDemoBackend(t *testing.T) *demo.Backend {
	t.Helper()
	be, err := demo.Start("127.0.0.1:0", map[string]string{"demo": "demo"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	return be
}

// adminTestConfig is a gateway config on loopback: one implicit-TLS listener,
// a self-signed certificate, no failure delay, and bans.allow reduced to ::1
// so that 127.0.0.0/8 addresses can be limited and banned. The admin endpoint
// is off: startAdminEnv starts it on a free port.
func adminTestConfig(t *testing.T, backend string) *conf.Config {
	cfg := conf.Default()
	cfg.Server.Hostname = "localhost"
	cfg.Server.StateDir = t.TempDir()
	cfg.Server.DrainTimeout = conf.D(time.Second)
	cfg.Listen = []conf.Listen{{Address: "127.0.0.1:0", TLS: conf.TLSImplicit}}
	cfg.TLS.Certificate = conf.CertSelfSigned
	cfg.TLS.Names = []string{"127.0.0.1"}
	cfg.Backend.Servers = []string{backend}
	cfg.Backend.ClientIP = conf.ClientIPNone // the in-memory backend has no ID command
	cfg.Limits.PreauthTimeout = conf.D(5 * time.Second)
	cfg.Bans.FailureDelay = conf.D(0)
	cfg.Bans.Allow = []netip.Prefix{netip.MustParsePrefix("::1/128")}
	cfg.Admin.Address = ""
	return cfg
}

// startAdminEnv starts the gateway from cfg (and path, for reloads) and its
// admin endpoint with a token, and stops both when the test ends.
func startAdminEnv(t *testing.T, cfg *conf.Config, path string) *adminEnv {
	t.Helper()
	env := &adminEnv{logs: &testbed.LogBuffer{}, token: "test-token-42"}
	env.tokenFile = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(env.tokenFile, []byte(env.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g, err := startGateway(cfg, path, env.logs)
	if err != nil {
		t.Fatal(err)
	}
	env.g = g
	env.imaps = g.srv.Addrs()[0].String()
	env.adm, err = g.newAdmin(conf.Admin{Address: "127.0.0.1:0", TokenFile: env.tokenFile})
	if err == nil {
		err = env.adm.Start()
	}
	if err != nil {
		g.shutdown()
		t.Fatal(err)
	}
	env.addr = env.adm.Addr().String()
	t.Cleanup(func() {
		env.adm.Shutdown(context.Background())
		g.shutdown()
		if n := g.srv.Panics(); n != 0 {
			t.Errorf("%v panics recovered", n)
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", env.logs.String())
		}
	})
	return env
}

// call sends one request to the admin endpoint, with the token when auth is
// true, and returns the status and the body.
func (env *adminEnv) call(t *testing.T, method, path string, auth bool, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+env.addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth {
		req.Header.Set("Authorization", "Bearer "+env.token)
	}
	if method != "GET" && method != "HEAD" {
		req.Header.Set("Content-Type", "application/json") // as the CLI does
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// decode unmarshals a JSON body into v, failing the test otherwise.
func decode(t *testing.T, body string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("decoding %q: %v", body, err)
	}
}

// cli runs an `imapgw` command against the endpoint and returns its exit
// code, stdout and stderr.
func (env *adminEnv) cli(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	args = append(args, "-admin", env.addr, "-token-file", env.tokenFile)
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// dial opens an implicit-TLS IMAP connection; the test's end closes it.
func (env *adminEnv) dial(t *testing.T) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialTLS(env.imaps, &imapclient.Options{TLSConfig: &tls.Config{InsecureSkipVerify: true}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// login opens an implicit-TLS IMAP session and logs in as demo. The NOOP
// after LOGIN comes back through the relay, so once it is answered the
// gateway counts the session as relaying (the tagged OK is sent just before).
func (env *adminEnv) login(t *testing.T) *imapclient.Client {
	t.Helper()
	c := env.dial(t)
	if err := c.Login("demo", "demo").Wait(); err != nil {
		t.Fatalf("LOGIN demo: %v", err)
	}
	if err := c.Noop().Wait(); err != nil {
		t.Fatalf("NOOP after LOGIN: %v", err)
	}
	return c
}

// handshakeFrom dials the implicit-TLS listener from local address from and
// returns the handshake's error: a refused source is closed before any TLS.
func (env *adminEnv) handshakeFrom(from string) error {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	raw, err := d.Dial("tcp", env.imaps)
	if err != nil {
		return err
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
	return c.Handshake()
}

// scrape fetches /metrics and parses it with the Prometheus text parser.
func (env *adminEnv) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := env.call(t, "GET", "/metrics", true, "")
	if code != 200 {
		t.Fatalf("GET /metrics = %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// sample is the value of the series of family name whose labels include
// labels ("k", "v", …): a counter's or gauge's value, a histogram's count.
// ok is false when there is no such series.
func sample(fams map[string]*dto.MetricFamily, name string, labels ...string) (v float64, ok bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

func hasLabels(m *dto.Metric, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			found = found || (l.GetName() == kv[i] && l.GetValue() == kv[i+1])
		}
		if !found {
			return false
		}
	}
	return true
}

// eventually polls cond: the gateway counts some events a moment after the
// client sees them (a session's end, relayed bytes), over real sockets, with
// no clock to inject. On timeout it calls explain, if any, and fails.
func eventually(t *testing.T, what string, cond func() bool, explain func()) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			if explain != nil {
				explain()
			}
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
