package main

import (
	"fmt"
	"strings"
	"time"
)

// report is the whole markdown document: how it was made, where, and the numbers.
func report(opt options, r *results, m machine, took time.Duration) string {
	var b strings.Builder
	b.WriteString("# Benchmarks: imapgw, HAProxy and nginx's mail proxy\n\n")
	b.WriteString("Written by `make bench` (`go run ./bench -out docs/BENCHMARKS.md`); rerun it rather than edit.\n")
	b.WriteString("Numbers drift from run to run by up to 30% on a shared machine: compare ratios\n")
	b.WriteString("within one run, not absolute numbers between runs.\n\n")
	b.WriteString("## Machine\n\n")
	b.WriteString(m.table())
	b.WriteString("\n## Setup\n\n")
	b.WriteString(setup(opt, r, took))
	b.WriteString("\n## Results\n\n")
	fmt.Fprintf(&b, "Medians of %d round(s); ratios are imapgw over the other proxy in the same run\n", opt.rounds)
	b.WriteString("(above 1 is better for imapgw on rates, below 1 on latency, CPU and memory).\n")
	b.WriteString("A target is met when the ratio within a round meets it in at least 2 of 3 rounds;\n")
	b.WriteString("the rounds' own ratios follow the verdict.\n\n")
	b.WriteString(comparisonTable(r))
	if h := hybridTable(r); h != "" {
		b.WriteString("\n## The X25519MLKEM768 handshake\n\n")
		b.WriteString("Go's TLS client offers the hybrid post-quantum X25519MLKEM768 first, and imapgw accepts\n")
		b.WriteString("it; HAProxy 2.6 on OpenSSL 3.0 does not, so the table above uses X25519 for all. Here\n")
		b.WriteString("imapgw alone, full handshakes only (connect, handshake, close), 8 clients:\n\n")
		b.WriteString(h)
	}
	if opt.pool {
		b.WriteString("\n## imapgw through a pool of three backend servers\n\n")
		b.WriteString(poolTable(r, opt))
	}
	b.WriteString("\n## A banned source flooding imapgw\n\n")
	b.WriteString("Only imapgw: HAProxy cannot tell a failed login, and nginx leaves the decision to the\n")
	b.WriteString("auth_http server one writes. The source failed 16 logins (`bans.source_failures = 16`, above the 8 logins\n")
	b.WriteString("in flight per legitimate source at 64 clients, which count against it) and\n")
	b.WriteString("was banned; it then opens bare TCP connections as fast as it can, which imapgw closes\n")
	b.WriteString("at accept, before any TLS. CPU is imapgw's user+system time over the measurement,\n")
	b.WriteString("divided by the operations done.\n\n")
	b.WriteString(floodTable(r))
	b.WriteString("\n## Every round\n\n")
	b.WriteString(roundsTable(r, opt.rounds))
	b.WriteString("\n## Notes\n\n")
	b.WriteString("- nginx at 8 clients is bound by a wait of about 40 ms per cycle, not by CPU: its\n")
	b.WriteString("  mail proxy writes the two TLS 1.3 session tickets and the greeting as separate\n")
	b.WriteString("  small writes on a socket without TCP_NODELAY, so the greeting waits for the\n")
	b.WriteString("  client's delayed ACK (seen with strace on nginx 1.22). With 64 clients the waits\n")
	b.WriteString("  overlap and CPU decides.\n")
	b.WriteString(profileNote)
	if len(r.notes) == 0 {
		b.WriteString("- No failed operations.\n")
	}
	for _, n := range r.notes {
		b.WriteString("- " + n + "\n")
	}
	return b.String()
}

func setup(opt options, r *results, took time.Duration) string {
	var b strings.Builder
	b.WriteString("- Everything on loopback, on this one machine: the load generator and the backend\n")
	b.WriteString("  (one Go process, `bench/loadgen` and `bench/backend`) share the cores with the proxy\n")
	b.WriteString("  under test. The three proxies are started afresh for each round and measured in\n")
	b.WriteString("  turn, one kind of measurement at a time, so that their runs of one kind are seconds\n")
	b.WriteString("  apart; the order rotates from round to round.\n")
	b.WriteString("- One ECDSA P-256 certificate for all. Every login cycle is a new connection with a\n")
	b.WriteString("  full TLS handshake (no resumption): connect, handshake, greeting, LOGIN, LOGOUT.\n")
	b.WriteString("  The client offers X25519 and P-256 only, so all three use the same key exchange.\n")
	b.WriteString("  Negotiated:\n")
	for _, p := range peerOrder {
		if t, ok := r.tls[p]; ok {
			fmt.Fprintf(&b, "  - %s: %s\n", p, t)
		}
	}
	b.WriteString("- The backend accepts LOGIN and AUTHENTICATE PLAIN, answers IDLE, and serves every\n")
	fmt.Fprintf(&b, "  FETCH from memory (a %d-byte message). imapgw logs in on the client's behalf\n", opt.message)
	b.WriteString("  (AUTHENTICATE PLAIN with SASL-IR, after ID with the client's address); nginx asks its\n")
	b.WriteString("  auth_http (an http block of the same nginx) and logs in with LOGIN literals; HAProxy\n")
	b.WriteString("  relays the client's own LOGIN. imapgw takes the backend connection from its warm\n")
	b.WriteString("  connections when one is ready (`backend.warm_connections = 2`, the default: dialed\n")
	b.WriteString("  and greeted ahead of logins while logins come in), and dials one otherwise; HAProxy\n")
	b.WriteString("  and nginx dial the backend for each login.\n")
	b.WriteString("- Proxy settings are the defaults except what the bench needs: connection limits\n")
	b.WriteString("  raised; imapgw at its default `log.level = \"info\"` (one auth line and one session\n")
	b.WriteString("  line per login, to a file), `backend.client_ip = \"id\"` (the default), admin off, and\n")
	b.WriteString("  the legitimate sources (127.0.0.1–8) outside `bans.allow`, so its policy runs on every\n")
	b.WriteString("  connection; HAProxy with `nbthread 2` and AES-128-GCM first among its TLS 1.3 suites\n")
	b.WriteString("  (the others take it from the client); nginx with `worker_processes auto`.\n")
	b.WriteString("- The relay sessions' client reads through a 64 KB bufio.Reader.\n")
	fmt.Fprintf(&b, "- Each timed measurement runs %v, after a %v warm-up. Relay throughput counts\n", opt.dur, opt.warmup)
	b.WriteString("  whole FETCHes of the message over the time until the last one completed (MB = 10^6 bytes).\n")
	if opt.slices > 1 {
		fmt.Fprintf(&b, "- The login measurements take turns: the proxies alternate in %d slices of %v (who\n", opt.slices, opt.dur/time.Duration(opt.slices))
		b.WriteString("  goes first rotates), and each one's rate is its cycles over its slices' time. Rates\n")
		b.WriteString("  here move by 10-20% within seconds with the machine's other load; slices of a second\n")
		b.WriteString("  see the same machine, so a round's ratio is less noise than runs seconds apart.\n")
	}
	fmt.Fprintf(&b, "- Idle memory: the proxy's resident memory (VmRSS summed over all its processes) with\n")
	fmt.Fprintf(&b, "  %d logged-in sessions in IDLE, %v after the last one opened, minus the same before\n", opt.idle, opt.settle)
	fmt.Fprintf(&b, "  they opened (read %v after the warm-up, so that memory freed after a burst is freed\n", opt.settle)
	b.WriteString("  for both readings; imapgw returns it 5-6s after the last session started), divided by\n")
	b.WriteString("  their number. Measured first in each round.\n")
	if r.loadStart != "" {
		fmt.Fprintf(&b, "- Load average (1, 5, 15 min) at the start: %s; at the end: %s. Other engineers'\n", r.loadStart, loadAverage())
		b.WriteString("  tests may run on the machine meanwhile.\n")
	}
	if o := r.all("machine", "others"); len(o) > 0 {
		mean, most := 0.0, 0.0
		for _, v := range o {
			mean += v / float64(len(o))
			most = max(most, v)
		}
		fmt.Fprintf(&b, "- Other processes on the machine used %.2f cores on average during the timed\n", mean)
		fmt.Fprintf(&b, "  measurements (at most %.2f): the more, the noisier the rates. Proxy CPU per\n", most)
		b.WriteString("  cycle and per MB depend less on it than rates do.\n")
	}
	fmt.Fprintf(&b, "- The whole run took %v.\n", took.Round(time.Second))
	return b.String()
}

// profileNote is where imapgw's CPU went before and after issue 16's work:
// pprof CPU profiles of the imapgw process (admin /debug/pprof/profile, 8 s)
// under this bench's load, taken on the branch on 2026-12-02 with the machine
// shared (load average 13), so shares matter, not absolute times.
const profileNote = `- Profile of imapgw's relay (2 sessions, 16 MB FETCH) before issue 16: write and read
  syscalls 66% of its CPU (reads from the backend 34%; TLS records written one syscall
  per 16 KB record 27%; a MSG_PEEK readiness probe per 32 KB read 10%), AES-GCM 17%,
  deadline updates and clock reads 5%. After: the records of one chunk gathered and
  written with one syscall, the backend read straight into a pooled buffer taken only
  when data is there (256 KB after a full read), deadlines moved once a second:
  syscalls 45% (writes 29%, reads 15%), AES-GCM 40%, copying the records 7%. Proxy CPU
  per MB in alternating runs: 2195 and 2469 µs before, 1367 and 1443 µs after
  (HAProxy 1514 and 1916 µs in the same runs). Then 1 MB chunks after a full 256 KB
  read (at most 16 in flight in the process): at 2 sessions, 10 alternated runs of
  imapgw alone, 11% more MB/s and 16% less CPU per MB than with 256 KB chunks, every
  run better; fewer reads, writes and wake-ups per MB on both sides of the gateway.
- Profile of a login cycle (8 clients) before: TLS handshake 31% (X25519 12%, ECDSA
  P-256 signature 6.5%), login to the backend 19% (of which the TCP dial 15%), relaying
  LOGOUT and closing 25%, goroutine stack growth during the handshake 5%, the two info
  log lines 5.5% (a logger built per line, a write syscall per line), garbage collection
  3%. After: the session's pre-auth phase runs on a goroutine whose stack has already
  grown when one is waiting (stack growth 2.5%), log lines batched every 50 ms and
  written without a per-line logger (3%). System calls per login cycle (strace -c on
  imapgw, without the Go runtime's futex and nanosleep): 53 before, 41 after —
  keep-alive inherited from the listening socket (setsockopt 10 → 6), no MSG_PEEK
  probes (recvfrom 6 → 0), batched log lines (write 9 → 7), one shutdown instead of two.
- Profile of a login cycle at 2 clients, perf on imapgw, before the timer slack: the Go
  runtime's monitor thread (sysmon) 12.5% of imapgw's CPU, 8% in its 20 µs sleeps (one
  thread, a context switch every 170 µs), the scheduler's idle path (findRunnable) 16%;
  17-19 context switches per login cycle against HAProxy's 10. After (imapgw runs with a
  4 ms timer slack, internal/timerslack): sysmon 0.7%, 8.7 switches per cycle, CPU per
  cycle 20-28% lower at 2 clients and 10-16% at 8 and 64. HAProxy started under the same 4 ms slack
  kept its ratio to imapgw (1.06-1.13 in 3 rounds): its event loop has no such thread.
- After a login the backend's relay direction runs on the goroutine that ran the
  handshake and the login instead of a fresh one (proxy/relay.go startRelay): two
  builds side by side (-peers imapgw=PATH), 3 rounds, login cycles +1.4 to +5.6% at 2
  clients, +0.9 to +6.2% at 8, -1.1 to +5.6% at 64; memory per idle session 9.0-9.7 KB
  against 8.8-8.9 KB.
- The memory trim waited for one quiet second after a burst of sessions, so with the
  proxies taking turns in 1 s slices imapgw forced a collection and returned its free
  pages in every gap, and faulted the heap back in at the start of its next slice
  (perf at 2 clients: the trim's scavenge 2% of imapgw's CPU, page faults and TLB
  shootdowns besides). It now waits five quiet seconds (proxy/trim.go): side by side,
  3 rounds, CPU per login cycle 5-17% lower at 2 clients, 5-7% at 8, 1-8% at 64, login
  cycles +2 to +13% at 2 clients, +1 to +5% at 8, -0.5 to +7% at 64; memory per idle
  session unchanged (9.0-9.4 KB against 9.1 KB).
- Where the rest of the login gap is: X25519. Go 1.26's crypto/ecdh computes the
  server's key share with the same Montgomery ladder as the shared secret, 37-38 µs
  each here; OpenSSL derives its public key with a fixed-base Edwards multiplication
  and its shared secret takes 28.5 µs (openssl speed ecdhx25519). The same imapgw
  built against a crypto/ecdh whose key generation uses the fixed-base multiplication
  (an experiment with go build -overlay, 19 µs per key, not shipped; upstream this is
  golang/go#80858) ran +2.7 to +10.2% more login cycles at 2 clients, +1.7 to +4.9% at
  8 and -0.9 to +4.4% at 64, 1.08-1.20x HAProxy in every round. Go 1.27.3 still
  generates the key with the ladder (41 µs, as its ECDH). System calls per login
  cycle (strace -c, 64 clients): imapgw about 40 besides the runtime's futex and
  epoll_pwait, HAProxy about 61.
- Where a login cycle's time went at 2 clients (the load generator timing each step, 2
  rounds): imapgw 120 µs connect, 705 handshake, 169 greeting, 637 LOGIN, 309 LOGOUT;
  HAProxy 154, 822, 611, 303, 299 (its greeting waits for the backend's, imapgw's LOGIN
  for a connect to the backend and its greeting). Warm connections
  (backend.warm_connections, default 2: dialed and greeted ahead of logins while logins
  come in) took the LOGIN step to 512-615 µs: side by side, login cycles -3 to +9% at
  2 clients (+4% or more in 6 of 7 rounds), -3 to +3% at 8, -6 to +2% at 64. Unlike dialling at
  connect (below), they do not grow with the sessions that have not logged in: at most
  two per server. Against a stock Dovecot they saved 6.5 ms of its 25-35 ms LOGIN (its
  login process's start; proxy TestMeasureWarmDovecot). Then the auth and session
  lines without slog's caller lookup (runtime.Callers, 0.8% of CPU at 64 clients) and
  the client's relay direction on a worker whose stack is grown (copystack 1.4%): login
  cycles -2 to +8% at 2 clients, +2 to +6% at 8, +0 to +2% at 64.
- Fewer costs per login found in perf at 64 clients (each under 1.5% of imapgw's CPU):
  the backend socket dialled without keep-alive, which the relay sets when the
  session's backend direction first parks after a quiet second (SetKeepAliveConfig,
  four setsockopt calls, 1.2%); the metric children every login touches resolved once
  instead of by WithLabelValues ten times a login (0.75%); shutdown waking the tracked
  sessions instead of an AfterFunc on the server's context per session (0.9%). Side by
  side at 64 clients, 6 rounds: imapgw/HAProxy 1.067-1.105 before, 1.087-1.122 after,
  ahead in every round, CPU per cycle 2-4% lower; 2 and 8 clients unchanged within
  the noise (3 rounds).
- Tried and not kept: dialling the backend while the client is still before its LOGIN
  (+2% login cycles on average, but every session that has not logged in yet would hold
  a login process of a stock Dovecot, which runs one per connection and at most 100);
  pooling the two 4 KB and 2 KB pre-auth readers of a login (a quarter of the bytes it
  allocates; 5 rounds side by side at 64 clients, no difference in rate or CPU).
`
