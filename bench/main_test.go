package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

// TestImapgwConfigLoads holds the generated config to the config contract:
// conf.Load must accept it, with the settings the flood test relies on.
func TestImapgwConfigLoads(t *testing.T) {
	dir := t.TempDir()
	e := &env{dir: dir, cert: certFiles{cert: "/c.pem", key: "/k.pem"}, backend: "127.0.0.1:1143", maxConns: 21024, fdLimit: 20000}
	path := filepath.Join(dir, "imapgw.toml")
	if err := os.WriteFile(path, []byte(imapgwConfig(e, dir, 1993)), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := conf.Load(path)
	if err != nil {
		t.Fatalf("conf.Load(generated config) = %v", err)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"listen address", c.Listen[0].Address, "127.0.0.1:1993"},
		{"bans.allow", len(c.Bans.Allow), 0},
		{"bans.source_failures", c.Bans.SourceFailures, sourceFailures},
		{"bans.failure_delay", c.Bans.FailureDelay.Duration.String(), "0s"},
		{"backend.servers", c.Backend.Servers[0], "127.0.0.1:1143"},
		{"limits.max_connections_per_source", c.Limits.MaxConnectionsPerSource, 21024},
		{"admin.address", c.Admin.Address, ""},
		{"tls.certificate", c.TLS.Certificate, conf.CertFiles},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("config %s = %v, want %v", ck.what, ck.got, ck.want)
		}
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		in     []float64
		want   float64
		wantOK bool
	}{
		{[]float64{3, 1, 2}, 2, true},
		{[]float64{4, 1, 3, 2}, 2.5, true},
		{[]float64{7}, 7, true},
		{nil, 0, false},
	}
	for _, tt := range tests {
		got, ok := median(tt.in)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("median(%v) = %v, %v, want %v, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestTargetCell(t *testing.T) {
	rate := row{target: 1.1}
	mem := row{target: 1.0, lowerBetter: true}
	tests := []struct {
		w      row
		got    float64
		ok     bool
		rounds []float64
		want   string
	}{
		{rate, 1.2, true, nil, "≥ 1.1×: met"},
		{rate, 1.05, true, nil, "≥ 1.1×: **missed**"},
		{rate, 0, false, nil, "≥ 1.1×: not measured"},
		{mem, 0.9, true, nil, "< 1.0×: met"},
		{mem, 1.0, true, nil, "< 1.0×: **missed**"},
		{row{}, 3, true, nil, ""},
		// Two rounds of three decide, whatever the medians' ratio says.
		{rate, 0.87, true, []float64{1.103, 0.81, 1.26}, "≥ 1.1×: met in 2 of 3 rounds (1.10, 0.81, 1.26)"},
		{rate, 1.15, true, []float64{1.15, 1.09, 1.05}, "≥ 1.1×: **missed**, met only in 1 of 3 rounds (1.15, 1.09, 1.05)"},
		{mem, 0.9, true, []float64{0.9, 0.95, 1.2}, "< 1.0×: met in 2 of 3 rounds (0.90, 0.95, 1.20)"},
		{rate, 1.2, true, []float64{1.2}, "≥ 1.1×: met in 1 of 1 rounds (1.20)"},
	}
	for _, tt := range tests {
		if got := targetCell(tt.w, tt.got, tt.ok, tt.rounds); got != tt.want {
			t.Errorf("targetCell(%+v, %v, %v, %v) = %q, want %q", tt.w, tt.got, tt.ok, tt.rounds, got, tt.want)
		}
	}
}

func TestRoundRatios(t *testing.T) {
	r := newResults()
	for _, v := range []float64{110, 90, 130} {
		r.add(nameImapgw, "login2", v)
	}
	for _, v := range []float64{100, 100, 100} {
		r.add(nameHAProxy, "login2", v)
	}
	r.add(nameImapgw, "relay2", 5) // HAProxy missed the round: nothing to pair
	got := roundRatios(r, "login2")
	if len(got) != 3 || got[0] != 1.1 || got[1] != 0.9 || got[2] != 1.3 {
		t.Errorf("roundRatios(login2) = %v, want [1.1 0.9 1.3]", got)
	}
	if got := roundRatios(r, "relay2"); got != nil {
		t.Errorf("roundRatios(relay2) = %v, want nil", got)
	}
}

func TestComparisonTableRatios(t *testing.T) {
	r := newResults()
	for _, v := range []float64{100, 120, 110} {
		r.add(nameImapgw, "login8", v)
	}
	r.add(nameHAProxy, "login8", 100)
	r.add(nameNginx, "login8", 20)
	table := comparisonTable(r)
	want := "| login cycles/s, 8 clients | 110 | 100 | 20 | 1.10× | 5.50× | ≥ 1.1×: met |"
	if !strings.Contains(table, want) {
		t.Fatalf("comparisonTable() lacks %q:\n%s", want, table)
	}
}

func TestTreeUsageOfSelf(t *testing.T) {
	u, err := treeUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.rssKB <= 0 {
		t.Fatalf("treeUsage(self).rssKB = %d, want > 0", u.rssKB)
	}
	// Each sleep blocks a thread: a voluntary context switch at least.
	for range 5 {
		time.Sleep(time.Millisecond)
	}
	after, err := treeUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.ctx <= 0 || after.ctx <= u.ctx {
		t.Fatalf("treeUsage(self).ctx = %d, then %d after 5 sleeps; want positive and growing", u.ctx, after.ctx)
	}
}

func TestMessageSize(t *testing.T) {
	for _, size := range []int{0, 10, 1000, 16 << 20} {
		if got := len(message(size)); got != size {
			t.Errorf("len(message(%d)) = %d, want %d", size, got, size)
		}
	}
}

// TestHybridTable: the X25519MLKEM768 line is in the report once measured.
func TestHybridTable(t *testing.T) {
	r := newResults()
	if got := report(options{rounds: 1}, r, machine{}, 0); strings.Contains(got, "X25519MLKEM768 handshake") {
		t.Error("hybrid section without a measurement")
	}
	r.add(nameImapgw, "hs.x25519", 1000)
	r.add(nameImapgw, "hs.x25519.cpu", 500)
	r.add(nameImapgw, "hs.mlkem", 600)
	r.add(nameImapgw, "hs.mlkem.cpu", 750)
	r.setTLS("hs.x25519", "X25519")
	r.setTLS("hs.mlkem", "X25519MLKEM768")
	got := report(options{rounds: 1}, r, machine{}, 0)
	for _, want := range []string{"## The X25519MLKEM768 handshake", "| X25519MLKEM768 | 600 | 750 |", "250 µs more CPU per full handshake (1.50×)"} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// TestMakePeersSecondBuild: -peers imapgw=PATH adds another imapgw build under
// a name of its own and its own scratch directory, so that two builds can be
// measured side by side; a path that is not an executable file is refused.
func TestMakePeersSecondBuild(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "imapgw-b")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e := &env{dir: dir}
	peers, err := makePeers(options{gwBin: bin, peers: "imapgw, imapgw=" + bin}, e)
	if err != nil {
		t.Fatal(err)
	}
	if len(peers) != 2 || peers[0].name() != nameImapgw || peers[1].name() != "imapgw:imapgw-b" {
		t.Fatalf("peers %v, want imapgw and imapgw:imapgw-b", names(peers))
	}
	if a, b := peers[0].(*imapgwPeer), peers[1].(*imapgwPeer); a.tag == b.tag || b.bin != bin {
		t.Errorf("second build: tag %q (first %q), binary %q; want its own scratch directory and %s", b.tag, a.tag, b.bin, bin)
	}
	for _, bad := range []string{filepath.Join(dir, "missing"), dir, filepath.Join(dir, "plain")} {
		os.WriteFile(filepath.Join(dir, "plain"), nil, 0o644)
		if _, err := makePeers(options{peers: "imapgw=" + bad}, e); err == nil {
			t.Errorf("-peers imapgw=%s accepted", bad)
		}
	}
}

func names(peers []peer) []string {
	var out []string
	for _, p := range peers {
		out = append(out, p.name())
	}
	return out
}
