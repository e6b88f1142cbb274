package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/imapgw/imapgw/internal/pebbletest"
	"github.com/imapgw/imapgw/internal/testbed"
)

// The flood test's numbers. Under floodNofile descriptors the HTTP-01
// listener's cap is floodNofile/8 = 32.
const (
	floodNofile       = 256
	floodSources      = 50 // 127.0.1.1 … 127.0.1.50
	floodPerSource    = 10 // within limits.connection_rate's burst of 20
	floodSlow         = 10 // slow-header clients, from 127.0.3.1
	floodOneSource    = 30 // connections at once from 127.0.2.1 …
	floodPerSourceMax = 8  // … of which limits.max_connections_per_source are admitted
	challengeSlots    = floodNofile / 8
)

// TestChallengeFloodKeepsIMAPServing (issue 11, point 4): the real imapgw
// process, under a limit of 256 file descriptors, obtains its certificate from
// Pebble over HTTP-01 with nothing allow-listed (the CA's validations pass the
// normal admission), then its HTTP-01 port is flooded: 500 idle connections
// from 50 sources, 10 slow-header clients and 30 from one source over
// its limit of 8 at once, all held open by the clients. Unlimited, the listener
// would hold every one of them for 10 s and IMAP accepts would fail with
// EMFILE; here it holds at most its cap, a real login through the gateway to
// Dovecot succeeds during the flood, the log has no failed accept, the
// refusals are counted, and the slots come back once the timeouts close the
// held connections.
func TestChallengeFloodKeepsIMAPServing(t *testing.T) {
	d := testbed.StartDovecot(t, testbed.DovecotOptions{})
	port := pebbletest.FreePort(t)
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port})
	challenge := fmt.Sprintf("127.0.0.1:%d", port)
	imaps, admin := freeAddr(t), freeAddr(t)
	host := fmt.Sprintf("flood%d.imapgw.test", time.Now().UnixNano()%100000)
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	must(t, os.WriteFile(token, []byte("flood-token\n"), 0o600))
	gw := startLimitedProcess(t, fmt.Sprintf(`[server]
hostname = %q
state_dir = %q
drain_timeout = "1s"

[[listen]]
address = %q
tls = "implicit"

[tls]
certificate = "acme"

[acme]
ca = %q
ca_root = %q
email = "postmaster@imapgw.test"
http_challenge_address = %q

[backend]
servers = [%q]

[limits]
max_connections_per_source = %d

[bans]
allow = []          # Pebble's validations and the flood pass the normal admission

[admin]
address = %q
token_file = %q
`, host, filepath.Join(dir, "state"), imaps, p.DirectoryURL, p.CAFile, challenge, d.Addr, floodPerSourceMax, admin, token), floodNofile)
	gw.waitReady(t, admin, 30*time.Second)
	before := gw.fds(t)

	start := time.Now()
	fl := &flood{t: t, addr: challenge}
	defer fl.close()
	for range floodOneSource {
		fl.dial("127.0.2.1")
	}
	for i := range floodSlow {
		if c := fl.dial("127.0.3.1"); c != nil {
			go trickle(c, i)
		}
	}
	for s := 1; s <= floodSources; s++ {
		for range floodPerSource {
			fl.dial(fmt.Sprintf("127.0.1.%d", s))
		}
	}
	during := gw.fds(t)
	t.Logf("%d connections to the HTTP-01 port in %v (fd limit %d): %d connected and held open by the clients, %d reset during the connect; imapgw's descriptors: %d before, %d during the flood",
		fl.tries, time.Since(start).Round(time.Millisecond), floodNofile, len(fl.held), fl.reset, before, during)
	if during-before > challengeSlots+4 {
		t.Errorf("imapgw holds %d more descriptors during the flood, want at most the cap %d (+4)", during-before, challengeSlots)
	}

	// a real login through the gateway, while the flood is held
	loginStart := time.Now()
	c, err := imapclient.DialTLS(imaps, &imapclient.Options{TLSConfig: &tls.Config{RootCAs: p.Roots(t), ServerName: host}})
	if err != nil {
		t.Fatalf("dialing the gateway during the flood: %v", err)
	}
	if err := c.Login("alice", "alice-secret").Wait(); err != nil {
		t.Fatalf("login during the flood: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("select during the flood: %v", err)
	}
	c.Logout().Wait()
	c.Close()
	// Unlimited, the login waited in the backlog until the 10 s timeouts
	// freed descriptors (21 s, measured); it must not wait for any timeout.
	t.Logf("login during the flood: %v", time.Since(loginStart).Round(time.Millisecond))
	if since := time.Since(start); since > 5*time.Second {
		t.Errorf("the flood and the login took %v; want the login done while the flood is held (challenge timeout 5 s)", since)
	}
	d.WaitLog(t, "user=<alice>", 5*time.Second)

	fams := scrapeWithToken(t, admin, "flood-token")
	full, _ := sample(fams, "imapgw_acme_challenge_connections_total", "challenge", "http-01", "outcome", "refused_full")
	policy, _ := sample(fams, "imapgw_acme_challenge_connections_total", "challenge", "http-01", "outcome", "refused_policy")
	accepted, _ := sample(fams, "imapgw_acme_challenge_connections_total", "challenge", "http-01", "outcome", "accepted")
	t.Logf("challenge connections: %v accepted (Pebble's included), %v refused at the cap, %v refused by the policy", accepted, full, policy)
	if want := float64(fl.tries - challengeSlots); full+policy < want || full == 0 {
		t.Errorf("refused_full + refused_policy = %v + %v, want at least %v (every flood connection over the cap), some of them at the cap", full, policy, want)
	}
	if policy < floodOneSource-floodPerSourceMax {
		t.Errorf("refused_policy = %v, want at least %d (127.0.2.1's connections over its limit)", policy, floodOneSource-floodPerSourceMax)
	}
	gw.running(t)
	for _, bad := range []string{"accept failed", "too many open files"} {
		if strings.Contains(gw.logs.String(), bad) {
			t.Errorf("the log has %q during the flood", bad)
		}
	}
	if !strings.Contains(gw.logs.String(), "challenge listener at its connection cap") {
		t.Errorf("no warning that the challenge listener was at its cap")
	}

	// the held connections time out (challenge timeout 5 s) and the slots
	// come back: a request gets its 404
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		resp, err := http.Get("http://" + challenge + "/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusNotFound {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the HTTP-01 listener still refuses 10 s after the flood: %v", err)
		}
	}
	testbed.WaitFor(t, 5*time.Second, fmt.Sprintf("imapgw's descriptors back to about %d as before the flood", before),
		func() bool { return gw.fds(t) <= before+2 })
}

// flood opens connections to addr and keeps them open until close.
type flood struct {
	t            *testing.T
	addr         string
	held         []net.Conn
	tries, reset int
}

// dial connects from the local address from; nil when the server reset the
// connection before the connect completed (refused at once).
func (f *flood) dial(from string) net.Conn {
	f.t.Helper()
	f.tries++
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", f.addr)
	if errors.Is(err, syscall.ECONNRESET) {
		f.reset++
		return nil
	}
	if err != nil {
		f.t.Fatalf("flood: dialing %s from %s: %v", f.addr, from, err)
	}
	f.held = append(f.held, c)
	return c
}

func (f *flood) close() {
	for _, c := range f.held {
		c.Close()
	}
}

// trickle sends a request head one byte every 300 ms and never ends it.
func trickle(c net.Conn, i int) {
	head := fmt.Sprintf("GET /.well-known/acme-challenge/%d HTTP/1.1\r\nHost: x\r\nX-Slow: %s", i, strings.Repeat("a", 200))
	for j := range len(head) {
		if _, err := c.Write([]byte{head[j]}); err != nil {
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// scrapeWithToken fetches and parses the admin endpoint's /metrics.
func scrapeWithToken(t *testing.T, admin, token string) map[string]*dto.MetricFamily {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+admin+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics = %d %s", resp.StatusCode, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// TestIMAPAcceptBacksOffOnEMFILE: when the process runs out of descriptors
// anyway (here: idle IMAP connections from an allow-listed source, under a
// limit of 64), the IMAP accept loop waits between failed accepts, up to a
// second, instead of spinning or exiting; a login made meanwhile waits in the
// backlog and succeeds as soon as descriptors are free again.
func TestIMAPAcceptBacksOffOnEMFILE(t *testing.T) {
	be := startDemoBackend(t)
	imaps, admin := freeAddr(t), freeAddr(t)
	dir := t.TempDir()
	gw := startLimitedProcess(t, fmt.Sprintf(`[server]
hostname = "localhost"
state_dir = %q
drain_timeout = "1s"

[[listen]]
address = %q
tls = "implicit"

[tls]
certificate = "self-signed"

[backend]
servers = [%q]
client_ip = "none"

[admin]
address = %q
`, filepath.Join(dir, "state"), imaps, be.Addr, admin), 64)
	gw.waitReady(t, admin, 10*time.Second)

	fl := &flood{t: t, addr: imaps}
	defer fl.close()
	for range 100 {
		fl.dial("127.0.0.1") // allow-listed: no per-source limit
	}
	const failed = "too many open files"
	testbed.WaitFor(t, 10*time.Second, "a failed accept with EMFILE", func() bool { return strings.Contains(gw.logs.String(), failed) })
	testbed.WaitFor(t, 5*time.Second, "the accept backoff at its 1 s ceiling", func() bool { return strings.Contains(gw.logs.String(), "retry_in=1s") })
	n0 := strings.Count(gw.logs.String(), failed)
	time.Sleep(3 * time.Second) // the observation window: a spinning loop logs thousands of lines in it
	n := strings.Count(gw.logs.String(), failed) - n0
	t.Logf("failed accepts logged in 3 s at the backoff ceiling: %d", n)
	if n > 5 {
		t.Errorf("%d failed accepts logged in 3 s, want at most 5 (one a second)", n)
	}
	gw.running(t)

	login := make(chan error, 1)
	go func() { login <- tryLoginFrom("127.0.0.1", imaps, "demo", "demo") }()
	fl.close()
	select {
	case err := <-login:
		if err != nil {
			t.Fatalf("login once the descriptors were free: %v", err)
		}
	case <-time.After(8 * time.Second):
		t.Fatalf("no login 8 s after the descriptors were freed")
	}
	gw.running(t)
}
