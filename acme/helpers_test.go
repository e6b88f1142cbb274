package acme

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imapgw/imapgw/conf"
)

// logBuffer captures a Manager's log lines; the test reads them and they are
// printed if it fails.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newLogger returns a logger writing to a buffer that is dumped on failure,
// or always with IMAPGW_TEST_LOG=1 (then at debug level).
func newLogger(t *testing.T) (*slog.Logger, *logBuffer) {
	t.Helper()
	buf := &logBuffer{}
	always := os.Getenv("IMAPGW_TEST_LOG") == "1"
	t.Cleanup(func() {
		if t.Failed() || always {
			t.Logf("manager log:\n%s", buf.String())
		}
	})
	level := slog.LevelInfo
	if always {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: level})), buf
}

// baseConfig is a valid configuration for source with the given hostname.
func baseConfig(t *testing.T, source, hostname string) *conf.Config {
	t.Helper()
	c := conf.Default()
	c.Server.Hostname = hostname
	c.Server.StateDir = t.TempDir()
	c.TLS.Certificate = source
	return c
}

// startManager starts m until the test ends and waits for it to stop then,
// so nothing of it outlives the test.
func startManager(t *testing.T, m *Manager) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if err := m.Start(ctx); err != nil {
		cancel()
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { stopManager(t, m, cancel) })
	return cancel
}

func stopManager(t *testing.T, m *Manager, cancel context.CancelFunc) {
	t.Helper()
	cancel()
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Errorf("Manager did not stop within 10s of its context ending")
	}
}

// serve runs an echo server with m's TLS config on 127.0.0.1 and returns its
// address: the handshake happens on the first read, as in the gateway.
func serve(t *testing.T, m *Manager) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(60 * time.Second))
				_, _ = io.Copy(c, c)
			})
		}
	})
	return ln.Addr().String()
}

// dial completes a TLS handshake with addr; the caller closes the conn.
func dial(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c, nil
}

// peer completes a handshake and returns the server's leaf certificate.
func peer(t *testing.T, addr string, cfg *tls.Config) *x509.Certificate {
	t.Helper()
	c, err := dial(t, addr, cfg)
	if err != nil {
		t.Fatalf("handshake with %s (SNI %q): %v", addr, cfg.ServerName, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

// verifying returns a client config that sends sni (none when empty) and
// accepts only a chain to roots valid for name, so a handshake without SNI
// can still be checked against the hostname.
func verifying(roots *x509.CertPool, sni, name string, protos ...string) *tls.Config {
	return &tls.Config{
		ServerName:         sni,
		NextProtos:         protos,
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				Roots: roots, Intermediates: inter, DNSName: name,
			})
			return err
		},
	}
}

// echo writes msg over c and expects it back.
func echo(t *testing.T, c *tls.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("writing over the TLS connection: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading over the TLS connection: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo(%q) = %q, want %q", msg, got, msg)
	}
}

// waitFor polls cond every 20ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLog waits until the log holds a line containing every part.
func waitLog(t *testing.T, logs *logBuffer, d time.Duration, parts ...string) {
	t.Helper()
	waitFor(t, d, "a log line with "+strings.Join(parts, " and "), func() bool {
		return hasLine(logs.String(), parts...)
	})
}

func hasLine(log string, parts ...string) bool {
	for line := range strings.SplitSeq(log, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

// metricValue gathers reg and returns the value of the metric family name
// (a gauge or counter), for the series whose "name" label is label ("" for
// an unlabelled metric). It fails the test when there is no such series.
func metricValue(t *testing.T, reg *prometheus.Registry, family, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != family {
			continue
		}
		for _, m := range mf.GetMetric() {
			var name string
			for _, l := range m.GetLabel() {
				if l.GetName() == "name" {
					name = l.GetValue()
				}
			}
			if name != label {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s{name=%q}", family, label)
	return 0
}
