package main

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

// The operator's files (issue 17), relative to this package.
const (
	rulesFile     = "../../contrib/prometheus/imapgw.rules.yml"
	rulesTestFile = "../../contrib/prometheus/imapgw.rules.test.yml"
	dashboardFile = "../../contrib/grafana/imapgw.json"
)

// TestPrometheusRules runs Prometheus' own checker and unit tests on the
// rules: syntax, and each alert firing (or not) on the series in the test file.
func TestPrometheusRules(t *testing.T) {
	testbed.Need(t, "promtool")
	for _, args := range [][]string{{"check", "rules", rulesFile}, {"test", "rules", rulesTestFile}} {
		out, err := exec.Command(testbed.Path("promtool"), args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

var (
	metricName    = regexp.MustCompile(`\bimapgw_[a-z0-9_]+`)
	recordingName = regexp.MustCompile(`\bimapgw:[a-z0-9_:]+`)
	recordRule    = regexp.MustCompile(`(?m)^\s*- record:\s*(imapgw:[a-z0-9_:]+)\s*$`)
)

// TestDashboardAndRulesUseExportedMetrics: every imapgw_ metric the alert
// rules and the Grafana dashboard name is one /metrics of a running gateway
// exports (a histogram's _bucket, _sum and _count through its family), and
// every recording rule the dashboard uses is defined in the rules. A renamed
// metric fails here instead of leaving the operator an empty panel or an
// alert that can never fire.
func TestDashboardAndRulesUseExportedMetrics(t *testing.T) {
	rules := readText(t, rulesFile)
	dash := readText(t, dashboardFile)
	used := map[string][]string{} // name → files naming it
	for file, text := range map[string]string{rulesFile: rules, dashboardFile: dash} {
		for _, n := range metricName.FindAllString(text, -1) {
			if !slices.Contains(used[n], file) {
				used[n] = append(used[n], file)
			}
		}
	}
	if len(used) < 10 {
		t.Fatalf("only %d metric names found in the rules and the dashboard: is the pattern wrong?", len(used))
	}
	defined := map[string]bool{}
	for _, m := range recordRule.FindAllStringSubmatch(rules, -1) {
		defined[m[1]] = true
	}
	for _, n := range recordingName.FindAllString(dash, -1) {
		if !defined[n] {
			t.Errorf("%s uses recording rule %s, which %s does not define", dashboardFile, n, rulesFile)
		}
	}

	fams := exportingGateway(t, used)
	for n, files := range used {
		if exported(fams, n) {
			continue
		}
		t.Errorf("%s names %s, which /metrics of a running gateway does not export", strings.Join(files, " and "), n)
	}
}

// exportingGateway runs a gateway with its admin endpoint and [cluster] on a
// real Redis (the imapgw_cluster_* families exist only then), makes one good
// and one failed login and waits for a health check, so that every family with
// labels has a series, and returns /metrics parsed once each used name that
// can appear does (or after 10 s).
func exportingGateway(t *testing.T, used map[string][]string) map[string]*dto.MetricFamily {
	be := startDemoBackend(t)
	cfg := adminTestConfig(t, be.Addr)
	cfg.Backend.CheckInterval = conf.D(100 * time.Millisecond)
	cfg.Cluster.Redis = testbed.StartRedis(t, testbed.RedisOptions{}).URL()
	env := startAdminEnv(t, cfg, "")
	env.login(t)
	if err := tryLoginFrom("127.0.0.1", env.imaps, "demo", "wrong"); err == nil {
		t.Fatalf("a wrong password logged in")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		fams := env.scrape(t)
		missing := 0
		for n := range used {
			if !exported(fams, n) {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			return fams
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// exported reports whether name is a family on /metrics, or a histogram's
// or summary's _bucket, _sum or _count series.
func exported(fams map[string]*dto.MetricFamily, name string) bool {
	if f := fams[name]; f != nil && len(f.GetMetric()) > 0 {
		return true
	}
	f := fams[familyOf(fams, name)]
	if f == nil || len(f.GetMetric()) == 0 {
		return false
	}
	switch f.GetType() {
	case dto.MetricType_HISTOGRAM:
		return true
	case dto.MetricType_SUMMARY:
		return !strings.HasSuffix(name, "_bucket")
	}
	return false
}

// familyOf strips a histogram suffix when the rest is a family.
func familyOf(fams map[string]*dto.MetricFamily, name string) string {
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok && fams[base] != nil {
			return base
		}
	}
	return name
}

func readText(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
