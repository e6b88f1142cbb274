package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// row is one line of the comparison table.
type row struct {
	key, label, format string
	lowerBetter        bool
	target             float64 // imapgw/HAProxy ratio to reach (to stay under, when lowerBetter); 0: none
}

// comparisonRows are the measurements every peer gets, in table order.
var comparisonRows = func() []row {
	var rows []row
	for _, c := range concurrencies {
		k := fmt.Sprintf("login%d", c)
		rows = append(rows,
			row{key: k, label: fmt.Sprintf("login cycles/s, %d clients", c), format: "%.0f", target: 1.1},
			row{key: k + ".p50", label: "  p50 latency, ms", format: "%.2f", lowerBetter: true},
			row{key: k + ".p99", label: "  p99 latency, ms", format: "%.2f", lowerBetter: true},
			row{key: k + ".cpu", label: "  proxy CPU per cycle, µs", format: "%.0f", lowerBetter: true},
			row{key: k + ".ctx", label: "  proxy context switches per cycle", format: "%.1f", lowerBetter: true})
	}
	for _, n := range concurrencies {
		k := fmt.Sprintf("relay%d", n)
		rows = append(rows,
			row{key: k, label: fmt.Sprintf("relay MB/s, 16 MB FETCH, %d sessions", n), format: "%.0f", target: 1.2},
			row{key: k + ".cpu", label: "  proxy CPU per MB, µs", format: "%.0f", lowerBetter: true, target: 0.8})
	}
	return append(rows, row{key: "idle", label: "KB per idle session", format: "%.1f", lowerBetter: true, target: 0.7})
}()

var peerOrder = []string{nameImapgw, nameHAProxy, nameNginx}

// comparisonTable is the markdown table of medians and same-run ratios.
func comparisonTable(r *results) string {
	var b strings.Builder
	b.WriteString("| measurement | imapgw | HAProxy | nginx | imapgw/HAProxy | imapgw/nginx | target (vs HAProxy) |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|---|\n")
	for _, w := range comparisonRows {
		fmt.Fprintf(&b, "| %s |", strings.Replace(w.label, "  ", "&nbsp;&nbsp;", 1))
		for _, p := range peerOrder {
			fmt.Fprintf(&b, " %s |", cell(r, p, w))
		}
		gh, okH := ratio(r, w.key, nameHAProxy)
		gn, okN := ratio(r, w.key, nameNginx)
		fmt.Fprintf(&b, " %s | %s | %s |\n", ratioCell(gh, okH), ratioCell(gn, okN), targetCell(w, gh, okH, roundRatios(r, w.key)))
	}
	return b.String()
}

func cell(r *results, peer string, w row) string {
	v, ok := r.median(peer, w.key)
	if !ok {
		return "–"
	}
	return fmt.Sprintf(w.format, v)
}

// ratio is imapgw's median over peer's.
func ratio(r *results, key, peer string) (float64, bool) {
	g, ok1 := r.median(nameImapgw, key)
	o, ok2 := r.median(peer, key)
	if !ok1 || !ok2 || o == 0 {
		return 0, false
	}
	return g / o, true
}

func ratioCell(v float64, ok bool) string {
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%.2f×", v)
}

// roundRatios are imapgw's value over HAProxy's, round by round; nil when
// either missed a round (the rounds would not pair up).
func roundRatios(r *results, key string) []float64 {
	g, h := r.all(nameImapgw, key), r.all(nameHAProxy, key)
	if len(g) == 0 || len(g) != len(h) {
		return nil
	}
	out := make([]float64, len(g))
	for i := range g {
		if h[i] == 0 {
			return nil
		}
		out[i] = g[i] / h[i]
	}
	return out
}

// targetCell judges a target as issue 16 states it: met in at least two
// thirds of the rounds (2 of 3), each round's ratio taken within that round.
// With no rounds to pair, the ratio of the medians decides.
func targetCell(w row, median float64, ok bool, rounds []float64) string {
	if w.target == 0 {
		return ""
	}
	meets := func(v float64) bool {
		if w.lowerBetter {
			return v < w.target
		}
		return v >= w.target
	}
	want := fmt.Sprintf("≥ %.1f×", w.target)
	if w.lowerBetter {
		want = fmt.Sprintf("< %.1f×", w.target)
	}
	if !ok {
		return want + ": not measured"
	}
	if len(rounds) == 0 {
		if meets(median) {
			return want + ": met"
		}
		return want + ": **missed**"
	}
	n := 0
	per := make([]string, len(rounds))
	for i, v := range rounds {
		per[i] = fmt.Sprintf("%.2f", v)
		if meets(v) {
			n++
		}
	}
	verdict := "met"
	if 3*n < 2*len(rounds) {
		verdict = "**missed**, met only"
	}
	return fmt.Sprintf("%s: %s in %d of %d rounds (%s)", want, verdict, n, len(rounds), strings.Join(per, ", "))
}

// floodTable is imapgw's banned-source measurement.
func floodTable(r *results) string {
	v := func(key, format string) string {
		x, ok := r.median(nameImapgw, key)
		if !ok {
			return "–"
		}
		return fmt.Sprintf(format, x)
	}
	var b strings.Builder
	b.WriteString("| measurement | without flood | during flood |\n|---|--:|--:|\n")
	fmt.Fprintf(&b, "| banned source: refusals/s (%d connections in flight) | %s (flood alone) | %s |\n",
		floodWorkers, v("flood.refusals", "%.0f"), v("flood.refusals_during", "%.0f"))
	fmt.Fprintf(&b, "| legitimate user: login cycles/s, 8 clients | %s | %s |\n", v("flood.base", "%.0f"), v("flood.during", "%.0f"))
	fmt.Fprintf(&b, "| legitimate user: p50 login latency, ms | %s | %s |\n", v("flood.base.p50", "%.2f"), v("flood.during.p50", "%.2f"))
	fmt.Fprintf(&b, "| legitimate user: p99 login latency, ms | %s | %s |\n", v("flood.base.p99", "%.2f"), v("flood.during.p99", "%.2f"))
	b.WriteString("\n| imapgw CPU per … | µs |\n|---|--:|\n")
	fmt.Fprintf(&b, "| refusal of a banned source | %s |\n", v("flood.refusals.cpu", "%.2f"))
	fmt.Fprintf(&b, "| full TLS handshake (connect, handshake, close) | %s |\n", v("flood.handshake.cpu", "%.1f"))
	fmt.Fprintf(&b, "| login cycle | %s |\n", v("flood.base.cpu", "%.1f"))
	hs, ok1 := r.median(nameImapgw, "flood.handshake.cpu")
	ref, ok2 := r.median(nameImapgw, "flood.refusals.cpu")
	if ok1 && ok2 && ref > 0 {
		verdict := "met"
		if hs/ref < 20 {
			verdict = "**missed**"
		}
		fmt.Fprintf(&b, "\nA refusal costs **%.0f× less** CPU than a full handshake (target ≥ 20×: %s).\n", hs/ref, verdict)
	}
	b.WriteString(kernelDropTable(r, v))
	return b.String()
}

// roundsTable lists every round's value, for judging the spread.
func roundsTable(r *results, rounds int) string {
	var b strings.Builder
	b.WriteString("| measurement | proxy |")
	for i := range rounds {
		fmt.Fprintf(&b, " round %d |", i+1)
	}
	b.WriteString("\n|---|---|" + strings.Repeat("--:|", rounds) + "\n")
	for _, w := range comparisonRows {
		for _, p := range peerOrder {
			vals := r.all(p, w.key)
			if len(vals) == 0 {
				continue
			}
			fmt.Fprintf(&b, "| %s | %s |", strings.TrimSpace(w.label), p)
			for i := range rounds {
				if i < len(vals) {
					fmt.Fprintf(&b, " "+w.format+" |", vals[i])
				} else {
					b.WriteString(" – |")
				}
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// machine describes where the numbers come from.
type machine struct {
	cpus                  int
	model, memory, kernel string
	goVersion             string
	versions              map[string]string // peer → version line
	date                  time.Time
}

func describeMachine(peers []peer) machine {
	m := machine{
		cpus: runtime.NumCPU(), goVersion: runtime.Version(), date: time.Now().UTC(),
		model:    procField("/proc/cpuinfo", "model name", ":"),
		memory:   memTotal(),
		versions: map[string]string{},
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = "Linux " + strings.TrimSpace(string(b))
	}
	for _, p := range peers {
		m.versions[p.name()] = p.version()
	}
	return m
}

// memTotal is MemTotal from /proc/meminfo in GiB.
func memTotal() string {
	v := strings.TrimSuffix(procField("/proc/meminfo", "MemTotal", ":"), " kB")
	kb, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return v
	}
	return fmt.Sprintf("%.1f GiB", kb/(1<<20))
}

// procField returns the value of the first "key<sep> value" line of file.
func procField(file, key, sep string) string {
	f, err := os.Open(file)
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), sep)
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func (m machine) table() string {
	var b strings.Builder
	b.WriteString("| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| date | %s |\n", m.date.Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "| CPU | %d × %s |\n", m.cpus, m.model)
	fmt.Fprintf(&b, "| memory | %s |\n", m.memory)
	fmt.Fprintf(&b, "| kernel | %s |\n", m.kernel)
	fmt.Fprintf(&b, "| Go | %s |\n", m.goVersion)
	for _, p := range peerOrder {
		if v, ok := m.versions[p]; ok {
			fmt.Fprintf(&b, "| %s | %s |\n", p, v)
		}
	}
	return b.String()
}
