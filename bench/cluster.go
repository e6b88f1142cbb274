package main

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/imapgw/imapgw/bench/loadgen"
)

// clusterClients is the concurrency of the [cluster] on/off comparison.
const clusterClients = 64

// clusterPeer is imapgw with [cluster] pointing at a Redis the bench started
// (issue 13): the same config as imapgwPeer plus that section.
type clusterPeer struct {
	*imapgwPeer
	redis string // "" : [cluster] off
}

func (g *clusterPeer) start() error {
	if err := g.prepare("imapgw" + g.tag); err != nil {
		return err
	}
	cfg := filepath.Join(g.dir, "imapgw.toml")
	text := imapgwConfig(g.env, g.dir, g.port)
	if g.redis != "" {
		text += fmt.Sprintf("\n[cluster]\nredis = %q\nnode = \"bench\"\n", g.redis)
	}
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		return err
	}
	return g.run("run", "-config", cfg)
}

// benchRedis is a redis-server for the measurement: loopback, no persistence.
type benchRedis struct {
	addr string
	p    *proc
}

func startBenchRedis(dir string) (*benchRedis, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server missing: run scripts/deps.sh")
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &benchRedis{addr: fmt.Sprintf("127.0.0.1:%d", port)}
	d := filepath.Join(dir, "redis")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, err
	}
	r.p, err = startProc(filepath.Join(d, "output.log"), bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--dir", d, "--save", "", "--appendonly", "no", "--daemonize", "no")
	if err != nil {
		return nil, err
	}
	if err := r.p.waitPort(r.addr, 10*time.Second); err != nil {
		r.p.stop(syscall.SIGKILL)
		return nil, err
	}
	return r, nil
}

// do sends inline commands and returns the raw replies up to the last one.
func (r *benchRedis) do(cmds ...string) (string, error) {
	c, err := net.DialTimeout("tcp", r.addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "%s\r\nQUIT\r\n", strings.Join(cmds, "\r\n"))
	var b strings.Builder
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		b.WriteString(sc.Text() + "\n")
	}
	return b.String(), nil
}

// loginRoundTrips counts the requests a login costs: EVALSHA, EVAL and EXISTS
// are the only commands on a login's path (heartbeats are SET/ZADD/…; the
// commands a script runs inside Redis are not round trips).
func (r *benchRedis) loginRoundTrips() (int, error) {
	out, err := r.do("INFO commandstats")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range strings.Split(out, "\n") {
		for _, c := range []string{"cmdstat_evalsha:", "cmdstat_eval:", "cmdstat_exists:"} {
			if rest, ok := strings.CutPrefix(l, c+"calls="); ok {
				v, _, _ := strings.Cut(rest, ",")
				k, _ := strconv.Atoi(v)
				n += k
			}
		}
	}
	return n, nil
}

// cluster measures login cycles with [cluster] on against off, in the same
// run, and the Redis round trips of a successful and a failed login.
func (b *bench) cluster(gw *imapgwPeer) error {
	r, err := startBenchRedis(gw.env.dir)
	if err != nil {
		b.res.note("cluster: not measured: %v", err)
		return nil
	}
	defer r.p.stop(syscall.SIGTERM)
	url := "redis://" + r.addr + "/0"
	on := &clusterPeer{imapgwPeer: &imapgwPeer{listenPeer: listenPeer{env: gw.env, bin: gw.bin}, tag: "-cluster-on"}, redis: url}
	off := &clusterPeer{imapgwPeer: &imapgwPeer{listenPeer: listenPeer{env: gw.env, bin: gw.bin}, tag: "-cluster-off"}}
	for round := range b.opt.rounds {
		order := []*clusterPeer{on, off}
		if round%2 == 1 {
			order = []*clusterPeer{off, on}
		}
		for _, g := range order {
			if err := g.start(); err != nil {
				return err
			}
			t := b.target(g)
			loadgen.Loop(8, b.opt.warmup, t.LoginCycle)
			key := "cluster.off"
			if g.redis != "" {
				key = "cluster.on"
			}
			var st loadgen.Stats
			cpu := b.withCPU(g, fmt.Sprintf("r%d-%s", round+1, key), func() { st = loadgen.Loop(clusterClients, b.opt.dur, t.LoginCycle) })
			b.recordLogins(nameImapgw, key, st, cpu, round+1)
			if g.redis != "" {
				if err := b.clusterRoundTrips(g, r); err != nil {
					g.stop()
					return err
				}
			}
			g.stop()
		}
	}
	return nil
}

// clusterRoundTrips counts Redis requests over 50 successful logins from the
// load's networks, over 10 first logins from new networks (a network is
// written to Redis when new, then once an hour), and over failed ones from
// 10 fresh sources (one failure each: no ban).
func (b *bench) clusterRoundTrips(g *clusterPeer, r *benchRedis) error {
	const ok, failed = 50, 10
	// settled waits until the count stops moving for 300 ms: the writes of
	// successes are queued, not waited for, and the load before may have left
	// some in the queue.
	settled := func() (int, error) {
		last, err := r.loginRoundTrips()
		for err == nil {
			time.Sleep(300 * time.Millisecond)
			var n int
			if n, err = r.loginRoundTrips(); n == last {
				return n, err
			}
			last = n
		}
		return 0, err
	}
	measure := func(n int, op func(i int) error) (float64, error) {
		before, err := settled()
		if err != nil {
			return 0, err
		}
		for i := range n {
			if err := op(i); err != nil {
				return 0, err
			}
		}
		after, err := settled()
		return float64(after-before) / float64(n), err
	}
	t := b.target(g)
	perOK, err := measure(ok, func(int) error { return t.LoginCycle() })
	if err != nil {
		return fmt.Errorf("cluster: successful logins: %w", err)
	}
	perFirst, err := measure(failed, func(i int) error {
		return b.target(g, netip.AddrFrom4([4]byte{127, byte(80 + i), 0, 1})).LoginCycle()
	})
	if err != nil {
		return fmt.Errorf("cluster: first logins from new networks: %w", err)
	}
	perFail, err := measure(failed, func(i int) error {
		bad := b.target(g, netip.AddrFrom4([4]byte{127, 0, 77, byte(i + 1)}))
		bad.Password = "wrong"
		if bad.LoginCycle() == nil {
			return fmt.Errorf("a wrong password logged in")
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cluster: failed logins: %w", err)
	}
	b.res.add(nameImapgw, "cluster.rtt.ok", perOK)
	b.res.add(nameImapgw, "cluster.rtt.okfirst", perFirst)
	b.res.add(nameImapgw, "cluster.rtt.failed", perFail)
	b.logf("imapgw   cluster: Redis round trips per successful login %.2f (first from a new network %.2f), per failed login %.2f", perOK, perFirst, perFail)
	return nil
}

// clusterTable is the [cluster] on/off comparison for the report.
func clusterTable(r *results) string {
	on, ok1 := r.median(nameImapgw, "cluster.on")
	off, ok2 := r.median(nameImapgw, "cluster.off")
	if !ok1 || !ok2 {
		return "\n## imapgw with [cluster] (Redis)\n\nNot measured.\n"
	}
	rttOK, _ := r.median(nameImapgw, "cluster.rtt.ok")
	rttFail, _ := r.median(nameImapgw, "cluster.rtt.failed")
	rttFirst, _ := r.median(nameImapgw, "cluster.rtt.okfirst")
	var b strings.Builder
	fmt.Fprintf(&b, "\n## imapgw with [cluster] (Redis)\n\n")
	fmt.Fprintf(&b, "Two imapgw instances, one with `[cluster]` on a local redis-server, one without,\n")
	fmt.Fprintf(&b, "alternating per round; %d clients doing login cycles (medians).\n\n", clusterClients)
	fmt.Fprintf(&b, "| | login cycles/s | target |\n|---|---|---|\n")
	fmt.Fprintf(&b, "| [cluster] off | %.0f | |\n| [cluster] on | %.0f | |\n", off, on)
	fmt.Fprintf(&b, "| on / off | %.2f× | ≥ 0.9× |\n", on/off)
	fmt.Fprintf(&b, "| Redis round trips per successful login (known network) | %.2f | ≤ 1 |\n", rttOK)
	fmt.Fprintf(&b, "| Redis round trips per successful login (first from its network) | %.2f | ≤ 1 |\n", rttFirst)
	fmt.Fprintf(&b, "| Redis round trips per failed login | %.2f | ≤ 2 |\n", rttFail)
	return b.String()
}
