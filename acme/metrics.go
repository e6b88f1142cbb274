package acme

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the package's Prometheus metrics: each name's expiry, read from
// the loaded certificates at scrape time so it can never be stale, a
// counter of failures, and the challenge listeners' admissions.
type metrics struct {
	expiry     *prometheus.Desc
	errors     prometheus.Counter
	challenges *prometheus.CounterVec // challenge, outcome
	certs      func() []CertInfo
}

func newMetrics(certs func() []CertInfo) *metrics {
	return &metrics{
		expiry: prometheus.NewDesc("imapgw_certificate_expiry_timestamp_seconds",
			"When the certificate served for a name expires (Unix time).", []string{"name"}, nil),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imapgw_certificate_errors_total",
			Help: "Failed certificate obtains, renewals and file reloads.",
		}),
		challenges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imapgw_acme_challenge_connections_total",
			Help: "Connections to the ACME challenge listeners by challenge (http-01, tls-alpn-01) and outcome (accepted; refused_full: the listener at its connection cap; refused_policy: the source banned, over the connection rate or at its connection limit).",
		}, []string{"challenge", "outcome"}),
		certs: certs,
	}
}

func (m *metrics) register(r prometheus.Registerer) error {
	if r == nil {
		return nil
	}
	if err := r.Register(m); err != nil {
		return fmt.Errorf("registering certificate metrics: %w", err)
	}
	return nil
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.expiry
	m.errors.Describe(ch)
	m.challenges.Describe(ch)
}

// Collect reports, for each name, the latest expiry among its certificates:
// during a renewal the old and the new one may both be loaded for a moment.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	latest := map[string]float64{}
	for _, c := range m.certs() {
		for _, n := range c.Names {
			if v := float64(c.NotAfter.Unix()); v > latest[n] {
				latest[n] = v
			}
		}
	}
	for n, v := range latest {
		ch <- prometheus.MustNewConstMetric(m.expiry, prometheus.GaugeValue, v, n)
	}
	m.errors.Collect(ch)
	m.challenges.Collect(ch)
}
