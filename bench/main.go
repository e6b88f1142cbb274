// Command bench measures imapgw side by side with HAProxy (TCP mode, TLS
// termination) and nginx's mail proxy, on loopback, in front of one in-process
// IMAP backend, with one ECDSA P-256 certificate: login cycles, relay
// throughput, memory per idle session, and (imapgw only) a banned source's
// flood. Each proxy is started fresh for each round and the order rotates, so
// drift hits all alike; the report gives medians and same-run ratios, and is
// written to a markdown file. It does not install anything: scripts/bench-deps.sh
// does (make bench runs it first).
//
//	go run ./bench -out docs/BENCHMARKS.md   # the full run, about 12 minutes
//	go run ./bench -quick                    # a smoke run, about a minute
//	go run ./bench -rounds 0 -pool=false -peers imapgw   # the banned-flood sections only
//	go run ./bench -measure login -pool=false -cluster=false -flood=false -hybrid=false \
//		-imapgw /tmp/a -peers imapgw,imapgw=/tmp/b,HAProxy     # two builds side by side
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/imapgw/imapgw/bench/backend"
)

type options struct {
	out     string
	quick   bool
	rounds  int
	dur     time.Duration // each timed measurement
	slices  int           // the login measurements alternate the peers in this many slices of dur/slices
	warmup  time.Duration
	settle  time.Duration // pause before reading RSS with the idle sessions open
	idle    int
	message int // bytes of the FETCHed message
	gwBin   string
	keep    bool
	peers   string
	perfDir string // record each proxy with perf into this directory
	flood   bool
	pool    bool
	cluster bool
	hybrid  bool
	measure string // comma-separated kinds of the side-by-side rounds: idle, login, relay
}

// measures reports whether the rounds include the kind of measurement.
func (o options) measures(kind string) bool {
	for _, k := range strings.Split(o.measure, ",") {
		if strings.TrimSpace(k) == kind {
			return true
		}
	}
	return false
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.StringVar(&o.out, "out", "", "write the report to this markdown file (e.g. docs/BENCHMARKS.md)")
	fs.BoolVar(&o.quick, "quick", false, "smoke run: one round, short measurements, 500 idle sessions")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds; the order of the proxies rotates each round (0: none; with -pool=false only the flood runs)")
	fs.DurationVar(&o.dur, "duration", 5*time.Second, "length of each timed measurement")
	fs.IntVar(&o.slices, "slices", 5, "each login measurement alternates the proxies in this many slices of -duration/slices")
	fs.IntVar(&o.idle, "idle", 5000, "sessions held in IDLE for the memory measurement")
	fs.IntVar(&o.message, "message", 16<<20, "size of the FETCHed message in bytes")
	fs.StringVar(&o.gwBin, "imapgw", "", "imapgw binary to test (default: build ./cmd/imapgw)")
	fs.BoolVar(&o.keep, "keep", false, "keep the scratch directory (configs and logs)")
	fs.StringVar(&o.peers, "peers", "imapgw,HAProxy,nginx", "proxies to measure, comma-separated; imapgw=PATH adds another imapgw build, logged as imapgw:BASENAME (A/B runs)")
	fs.BoolVar(&o.pool, "pool", true, "measure imapgw through three backend servers against one")
	fs.BoolVar(&o.cluster, "cluster", true, "measure imapgw with [cluster] on a local redis-server against without")
	fs.BoolVar(&o.flood, "flood", true, "measure imapgw against a banned source's flood")
	fs.BoolVar(&o.hybrid, "hybrid", true, "measure imapgw's handshake with X25519MLKEM768 against X25519")
	fs.StringVar(&o.measure, "measure", "idle,login,relay", "side-by-side measurements of each round, comma-separated")
	fs.DurationVar(&o.settle, "settle", 8*time.Second, "pause between opening the idle sessions and reading RSS (imapgw returns free memory 5-6s after a burst of sessions)")
	fs.StringVar(&o.perfDir, "perf", "", "record each proxy with `perf record -g` during each measurement into this directory")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.warmup = time.Second
	if o.quick {
		o.rounds, o.dur, o.idle, o.warmup, o.settle, o.slices = 1, 1500*time.Millisecond, 500, 300*time.Millisecond, time.Second, 1
	}
	if o.rounds < 0 || o.idle < 1 || o.dur <= 0 || o.slices < 1 {
		return o, fmt.Errorf("-idle, -duration and -slices must be positive, -rounds not negative")
	}
	if o.perfDir != "" {
		if err := os.MkdirAll(o.perfDir, 0o755); err != nil {
			return o, err
		}
	}
	return o, nil
}

func main() {
	opt, err := parseFlags(os.Args[1:])
	if err != nil {
		os.Exit(2)
	}
	if err := run(opt); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(opt options) error {
	start := time.Now()
	// Each idle session is a socket on each side of the proxy, and the
	// backend's side is in this process too. Without CAP_SYS_RESOURCE (a
	// container) the hard limit caps it, which must still fit.
	fds, err := raiseFileLimit(uint64(4*opt.idle + 4096))
	if err != nil {
		return fmt.Errorf("raising RLIMIT_NOFILE: %w", err)
	}
	if need := uint64(2*opt.idle + 2048); fds < need {
		return fmt.Errorf("RLIMIT_NOFILE is %d, -idle %d needs %d", fds, opt.idle, need)
	}
	dir, err := os.MkdirTemp("", "imapgw-bench-")
	if err != nil {
		return err
	}
	if opt.keep {
		fmt.Fprintln(os.Stderr, "bench: scratch directory", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	cert, err := writeCert(dir)
	if err != nil {
		return err
	}
	be := backend.New(benchUser, benchPassword, message(opt.message))
	if err := be.Listen("127.0.0.1:0"); err != nil {
		return err
	}
	defer be.Close()
	e := &env{dir: dir, cert: cert, backend: be.Addr(), maxConns: opt.idle + 1000, fdLimit: int(fds)}
	peers, err := makePeers(opt, e)
	if err != nil {
		return err
	}
	b := &bench{opt: opt, res: newResults(), backend: be}
	b.res.loadStart = loadAverage()
	m := describeMachine(peers)
	for round := range opt.rounds {
		if err := b.round(rotate(peers, round), round+1); err != nil {
			return err
		}
	}
	for _, p := range peers {
		if p.name() == nameImapgw && opt.hybrid {
			if err := b.hybrid(p); err != nil {
				return fmt.Errorf("hybrid handshake: %w", err)
			}
		}
	}
	for _, p := range peers {
		if p.name() == nameImapgw && opt.pool {
			if err := b.pool(p.(*imapgwPeer)); err != nil {
				return fmt.Errorf("pool: %w", err)
			}
		}
	}
	for _, p := range peers {
		if p.name() == nameImapgw && opt.cluster {
			if err := b.cluster(p.(*imapgwPeer)); err != nil {
				return fmt.Errorf("cluster: %w", err)
			}
		}
	}
	for _, p := range peers {
		if p.name() == nameImapgw && opt.flood {
			if err := b.flood(p); err != nil {
				return fmt.Errorf("flood: %w", err)
			}
			if err := b.kernelDrop(p.(*imapgwPeer)); err != nil {
				return fmt.Errorf("kernel drop: %w", err)
			}
		}
	}
	doc := report(opt, b.res, m, time.Since(start))
	if opt.cluster {
		doc += clusterTable(b.res)
	}
	fmt.Print(doc)
	if opt.out != "" {
		if err := os.WriteFile(opt.out, []byte(doc), 0o644); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "bench: wrote", opt.out)
	}
	return nil
}

// rotate returns peers starting at index k (mod len), so each round begins
// with a different proxy.
func rotate(peers []peer, k int) []peer {
	k %= len(peers)
	return append(append([]peer{}, peers[k:]...), peers[:k]...)
}

// makePeers builds the proxies named in -peers; a missing binary is an error
// that says how to install it.
func makePeers(opt options, e *env) ([]peer, error) {
	var out []peer
	for _, name := range strings.Split(opt.peers, ",") {
		name = strings.TrimSpace(name)
		if path, ok := strings.CutPrefix(name, "imapgw="); ok {
			// Another build, measured beside the first under its own name
			// (its results are logged, the report's table has imapgw's).
			bin, err := filepath.Abs(path)
			if err != nil || !isExec(bin) {
				return nil, fmt.Errorf("-peers %s: not an executable file", name)
			}
			label := "imapgw:" + filepath.Base(bin)
			out = append(out, &imapgwPeer{listenPeer: listenPeer{env: e, bin: bin}, label: label, tag: "-" + filepath.Base(bin)})
			continue
		}
		switch strings.ToLower(name) {
		case "imapgw":
			bin, err := imapgwBinary(opt, e.dir)
			if err != nil {
				return nil, err
			}
			out = append(out, &imapgwPeer{listenPeer: listenPeer{env: e, bin: bin}})
		case "haproxy":
			bin, err := lookBin("haproxy")
			if err != nil {
				return nil, err
			}
			out = append(out, &haproxyPeer{listenPeer{env: e, bin: bin}})
		case "nginx":
			bin, err := lookBin("nginx")
			if err != nil {
				return nil, err
			}
			if !isFile(nginxMailModule) {
				return nil, fmt.Errorf("%s missing: run scripts/bench-deps.sh (libnginx-mod-mail)", nginxMailModule)
			}
			out = append(out, &nginxPeer{listenPeer: listenPeer{env: e, bin: bin}})
		default:
			return nil, fmt.Errorf("-peers: unknown proxy %q", name)
		}
	}
	return out, nil
}

func isFile(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
}

// imapgwBinary builds ./cmd/imapgw unless -imapgw names a binary.
func imapgwBinary(opt options, dir string) (string, error) {
	if opt.gwBin != "" {
		return filepath.Abs(opt.gwBin)
	}
	bin := filepath.Join(dir, "imapgw-bin")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/imapgw")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/imapgw (run the bench from the repository root): %v\n%s", err, out)
	}
	return bin, nil
}

// message is the FETCHed message: a header and lines of text, size bytes.
func message(size int) []byte {
	head := "From: bench@bench.localhost\r\nSubject: benchmark message\r\n\r\n"
	line := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 2)[:88] + "\r\n"
	if size <= len(head) {
		return bytes.Repeat([]byte("x"), size)
	}
	var b bytes.Buffer
	b.Grow(size)
	b.WriteString(head)
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	b.WriteString(strings.Repeat("x", size-b.Len()))
	return b.Bytes()
}
