// Package pebbletest runs Let's Encrypt's test CA, Pebble (Debian package
// `pebble`), as a child of a test: pebble-challtestsrv as its DNS server (every
// name resolves to 127.0.0.1) and pebble itself, on free loopback ports, with
// its own HTTPS certificate made by a throwaway CA in a temporary directory.
//
// It is test infrastructure only: production code must not import it. It does
// not solve challenges; the code under test does, on Options.HTTPPort and
// Options.TLSPort.
package pebbletest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/imapgw/imapgw/internal/testbed"
)

// Options says where Pebble sends its validation requests.
type Options struct {
	// HTTPPort is the port on 127.0.0.1 Pebble connects to for HTTP-01
	// validations: the code under test's challenge listener. 0 means a port
	// nothing listens on, so HTTP-01 fails.
	HTTPPort int
	// TLSPort is the same for TLS-ALPN-01.
	TLSPort int
}

// Pebble is a running (or stopped, see Stop) Pebble CA.
type Pebble struct {
	// DirectoryURL is the ACME directory: the client's acme.ca.
	DirectoryURL string
	// CAFile is a PEM file of the CA behind Pebble's own HTTPS certificate:
	// the client's acme.ca_root. Certificates Pebble issues chain to Roots.
	CAFile string
	// ManagementURL is Pebble's management API (roots, intermediates).
	ManagementURL string

	t      testing.TB
	dir    string
	config string
	dns    string
	client *http.Client

	mu     sync.Mutex
	pebble *process
}

// process is a child whose output is kept for the test log.
type process struct {
	cmd  *exec.Cmd
	out  *testbed.LogBuffer
	done chan struct{}
}

// Start runs challtestsrv and Pebble and returns once Pebble's directory
// answers. Both are stopped in t.Cleanup. When the binaries are missing the
// test is skipped loudly, or fails when CI=true (testbed.Need).
func Start(t testing.TB, o Options) *Pebble {
	t.Helper()
	testbed.Need(t, "pebble", "pebble-challtestsrv")
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("chmod %s: %v", dir, err)
	}
	ca := testbed.NewCA(t)
	caFile := ca.WritePEM(t, dir)
	certFile, keyFile := testbed.WriteLeafPEM(t, dir, ca.Leaf(t, "localhost", "127.0.0.1"))

	ports := freePorts(t, 4)
	listen := "127.0.0.1:" + strconv.Itoa(ports[0])
	mgmt := "127.0.0.1:" + strconv.Itoa(ports[1])
	p := &Pebble{
		DirectoryURL:  "https://" + listen + "/dir",
		CAFile:        caFile,
		ManagementURL: "https://" + mgmt,
		t:             t,
		dir:           dir,
		config:        filepath.Join(dir, "pebble-config.json"),
		dns:           "127.0.0.1:" + strconv.Itoa(ports[2]),
		client: &http.Client{
			Timeout:   5 * time.Second,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}},
		},
	}
	p.writeConfig(t, listen, mgmt, certFile, keyFile, o)

	dnsSrv := p.spawn(t, "challtestsrv", testbed.Path("pebble-challtestsrv"), nil,
		"-dns01", p.dns,
		"-http01", "", "-https01", "", "-tlsalpn01", "",
		"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
		"-management", "127.0.0.1:"+strconv.Itoa(ports[3]))
	t.Cleanup(func() { dnsSrv.stop() })
	t.Cleanup(p.Stop)
	p.Start()
	return p
}

func (p *Pebble) writeConfig(t testing.TB, listen, mgmt, certFile, keyFile string, o Options) {
	t.Helper()
	cfg := map[string]any{
		"listenAddress":           listen,
		"managementListenAddress": mgmt,
		"certificate":             certFile,
		"privateKey":              keyFile,
		"httpPort":                o.HTTPPort,
		"tlsPort":                 o.TLSPort,
		"ocspResponderURL":        "",
	}
	data, err := json.MarshalIndent(map[string]any{"pebble": cfg}, "", "  ")
	if err != nil {
		t.Fatalf("encoding pebble config: %v", err)
	}
	if err := os.WriteFile(p.config, data, 0o644); err != nil {
		t.Fatalf("writing pebble config: %v", err)
	}
}

// Start (re)starts Pebble after Stop, with the same ports and config. Its
// issuing root is new at every start: fetch it again with Roots.
func (p *Pebble) Start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pebble != nil {
		return
	}
	env := []string{
		"PEBBLE_VA_NOSLEEP=1",      // validate at once, not after a random pause
		"PEBBLE_WFE_NONCEREJECT=0", // else 5% of good nonces are refused
		"PEBBLE_AUTHZREUSE=0",      // a real challenge for every order
	}
	p.pebble = p.spawn(p.t, "pebble", testbed.Path("pebble"), env,
		"-config", p.config, "-dnsserver", p.dns)
	p.waitReady()
}

// waitReady polls the directory until it answers or the child dies.
func (p *Pebble) waitReady() {
	p.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := p.client.Get(p.DirectoryURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-p.pebble.done:
			p.t.Fatalf("pebble exited at start:\n%s", p.pebble.out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("pebble did not answer on %s: %v\n%s", p.DirectoryURL, err, p.pebble.out.String())
		}
	}
}

// Stop stops Pebble (not its DNS server); the CA is then unreachable until
// Start. Stopping a stopped Pebble does nothing.
func (p *Pebble) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pebble == nil {
		return
	}
	p.pebble.stop()
	p.pebble = nil
}

// Log returns what the running Pebble has written since its last Start
// (its log of orders, validations and issued certificates); "" when stopped.
func (p *Pebble) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pebble == nil {
		return ""
	}
	return p.pebble.out.String()
}

// Roots returns a pool with the root that Pebble's certificates chain to
// (management API GET /roots/0), regenerated at each Start.
func (p *Pebble) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	resp, err := p.client.Get(p.ManagementURL + "/roots/0")
	if err != nil {
		t.Fatalf("fetching pebble root: %v", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("fetching pebble root: status %d, %v", resp.StatusCode, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		t.Fatalf("pebble root is not PEM:\n%s", data)
	}
	return pool
}

// spawn starts a child whose output goes to a buffer that is logged when the
// test fails.
func (p *Pebble) spawn(t testing.TB, name, bin string, env []string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), env...)
	out := &testbed.LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	pr := &process{cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(pr.done)
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
	return pr
}

// stop kills the child and waits for it: Pebble keeps no state worth a
// graceful shutdown.
func (pr *process) stop() {
	_ = pr.cmd.Process.Kill()
	<-pr.done
}

// freePorts returns n distinct ports that were free on 127.0.0.1 a moment
// ago (TCP and UDP, for the DNS server).
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var held []io.Closer
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for len(ports) < n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		held = append(held, ln)
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue // taken for UDP: try another
		}
		held = append(held, pc)
		ports = append(ports, port)
	}
	return ports
}

// FreePort returns a port that was free on 127.0.0.1 a moment ago, for a
// challenge listener whose port Pebble must know before it starts.
func FreePort(t testing.TB) int {
	t.Helper()
	return freePorts(t, 1)[0]
}
