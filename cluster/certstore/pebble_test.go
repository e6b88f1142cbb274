package certstore_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/imapgw/imapgw/acme"
	"github.com/imapgw/imapgw/cluster/certstore"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/pebbletest"
	"github.com/imapgw/imapgw/internal/testbed"
)

// node is one gateway's certificate manager in the three-node test.
type node struct {
	m    *acme.Manager
	logs *testbed.LogBuffer
	addr string // a TLS listener serving m's certificates
}

// TestThreeNodesOneOrder: three certificate managers, each with its own
// certmagic cache and config as three gateways would have, share one Redis
// storage and start with empty state against Pebble. Exactly one order
// reaches Pebble and all three serve that certificate; when it is due, it
// is renewed once and all three serve the renewed one.
//
// Pebble validates HTTP-01 on node 0's challenge listener only (as a
// balancer might send it anywhere): whichever node orders, node 0 answers
// from what the shared storage holds.
func TestThreeNodesOneOrder(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	// Node 0's challenge port must be known to Pebble; the others listen
	// on any free port (Pebble never calls them).
	ports := []int{pebbletest.FreePort(t), 0, 0}
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: ports[0]})
	host := fmt.Sprintf("mail.cluster-%d.imapgw.test", time.Now().UnixNano())

	// Certificates live 20s and are renewed in their second half: the
	// first phase has 10s before any renewal may start.
	const lifetime = 20 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	var nodes []*node
	for i := range 3 {
		rc := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{r.Addr}})
		t.Cleanup(func() { rc.Close() })
		n := &node{logs: &testbed.LogBuffer{}}
		log := slog.New(slog.NewTextHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
		cfg := conf.Default()
		cfg.Server.Hostname = host
		cfg.Server.StateDir = t.TempDir()
		cfg.TLS.Certificate = conf.CertACME
		cfg.ACME.CA, cfg.ACME.CARoot, cfg.ACME.Email = p.DirectoryURL, p.CAFile, "ops@imapgw.test"
		cfg.ACME.HTTPChallengeAddress = "127.0.0.1:" + strconv.Itoa(ports[i])
		cfg.ACME.TLSALPNChallengeAddress = ""
		m, err := acme.New(cfg, acme.Options{
			Logger:             log,
			Storage:            certstore.New(rc, "fleet:", certstore.Options{PollInterval: 20 * time.Millisecond, Logger: log}),
			CertLifetime:       lifetime,
			RenewalWindowRatio: 0.5,
			RenewCheckInterval: 250 * time.Millisecond,
			RetryInterval:      200 * time.Millisecond,
			MaxRetryInterval:   time.Second,
		})
		if err != nil {
			t.Fatalf("node %d: acme.New: %v", i, err)
		}
		n.m = m
		nodes = append(nodes, n)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("node %d log:\n%s", i, n.logs)
			}
		})
	}
	t.Cleanup(func() {
		cancel()
		for _, n := range nodes {
			if n.addr == "" { // never started
				continue
			}
			select {
			case <-n.m.Done():
			case <-time.After(10 * time.Second):
				t.Errorf("a manager did not stop")
			}
		}
	})
	start := time.Now()
	for i, n := range nodes {
		if err := n.m.Start(ctx); err != nil {
			t.Fatalf("node %d: Start: %v", i, err)
		}
		n.addr = serveTLS(t, n.m)
	}
	for i, n := range nodes {
		testbed.WaitFor(t, 30*time.Second, fmt.Sprintf("node %d ready", i), n.m.Ready)
	}
	t.Logf("all three nodes ready %v after start", time.Since(start).Round(time.Millisecond))

	roots := p.Roots(t)
	first := servedBy(t, nodes, host, roots)
	if got := issued(p); got != 1 {
		t.Fatalf("Pebble issued %d certificates for three nodes, want 1\n%s", got, p.Log())
	}
	if got := obtainedLines(nodes, "certificate obtained"); got != 1 {
		t.Errorf("%d nodes logged an obtained certificate, want 1", got)
	}
	if got := ordersFor(p); got != 1 {
		t.Errorf("Pebble saw %d orders, want 1", got)
	}

	// Renewal: once, by one node; all three serve the renewed certificate.
	testbed.WaitFor(t, 30*time.Second, "all three nodes serving a renewed certificate", func() bool {
		for _, n := range nodes {
			if leaf(t, n.addr, host).SerialNumber.Cmp(first.SerialNumber) == 0 {
				return false
			}
		}
		return true
	})
	second := servedBy(t, nodes, host, roots)
	if got := issued(p); got != 2 {
		t.Errorf("Pebble issued %d certificates after one renewal, want 2\n%s", got, p.Log())
	}
	if got := obtainedLines(nodes, "certificate renewed"); got != 1 {
		t.Errorf("%d nodes logged a renewal, want 1", got)
	}
	t.Logf("first serial %x, renewed serial %x; Pebble orders %d, certificates issued %d",
		first.SerialNumber, second.SerialNumber, ordersFor(p), issued(p))
}

// issued counts the certificates Pebble logged as issued.
func issued(p *pebbletest.Pebble) int {
	return strings.Count(p.Log(), "Issued certificate serial")
}

// ordersFor counts the orders Pebble logged as created.
func ordersFor(p *pebbletest.Pebble) int {
	return strings.Count(p.Log(), "Added order")
}

func obtainedLines(nodes []*node, msg string) int {
	n := 0
	for _, nd := range nodes {
		n += strings.Count(nd.logs.String(), `msg="`+msg+`"`)
	}
	return n
}

// servedBy checks that every node serves one certificate valid for host
// under Pebble's root, and returns it.
func servedBy(t *testing.T, nodes []*node, host string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	var want *x509.Certificate
	for i, n := range nodes {
		got := leaf(t, n.addr, host)
		if _, err := got.Verify(x509.VerifyOptions{Roots: roots, DNSName: host, Intermediates: intermediates(t, n.addr, host)}); err != nil {
			t.Errorf("node %d serves a certificate that does not verify for %s: %v", i, host, err)
		}
		if want == nil {
			want = got
		} else if got.SerialNumber.Cmp(want.SerialNumber) != 0 {
			t.Errorf("node %d serves serial %x, node 0 %x", i, got.SerialNumber, want.SerialNumber)
		}
	}
	return want
}

func handshake(t *testing.T, addr, host string) tls.ConnectionState {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: host, InsecureSkipVerify: true}) // verified by the caller against Pebble's root
	if err != nil {
		t.Fatalf("handshake with %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState()
}

func leaf(t *testing.T, addr, host string) *x509.Certificate {
	t.Helper()
	return handshake(t, addr, host).PeerCertificates[0]
}

func intermediates(t *testing.T, addr, host string) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	for _, c := range handshake(t, addr, host).PeerCertificates[1:] {
		pool.AddCert(c)
	}
	return pool
}

// serveTLS completes handshakes with m's TLS config on a loopback port
// until the test ends, and returns the address.
func serveTLS(t *testing.T, m *acme.Manager) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	return ln.Addr().String()
}
