package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// metrics are the data path's counters; package admin only serves the registry.
type metrics struct {
	connections  *prometheus.CounterVec // listener, outcome
	sessions     *prometheus.GaugeVec   // state
	logins       *prometheus.CounterVec // outcome
	relayBytes   *prometheus.CounterVec // direction
	dial         prometheus.Histogram
	loginSeconds prometheus.Histogram
	panics       prometheus.Counter
	toBackend    prometheus.Counter // relayBytes' children, resolved once
	toClient     prometheus.Counter

	// Children every login touches, resolved once: WithLabelValues hashes
	// its labels and takes the vector's lock on each call, ten calls a login
	// (issue 16).
	preauth, relaying prometheus.Gauge
	loginsBy          map[string]prometheus.Counter // by outcome; read-only after newMetrics
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imapgw_connections_total", Help: "Connections by listener and admission outcome (accepted, refused_ban, refused_rate, refused_limit, refused_untrusted_proxy).",
		}, []string{"listener", "outcome"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imapgw_sessions", Help: "Open sessions by state (preauth, relaying).",
		}, []string{"state"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imapgw_logins_total", Help: "Login attempts by outcome (ok, failed, rejected, refused, error, timeout).",
		}, []string{"outcome"}),
		relayBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imapgw_relay_bytes_total", Help: "Bytes relayed after login, by direction.",
		}, []string{"direction"}),
		dial: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "imapgw_backend_dial_seconds", Help: "Time a login's own connect to the backend took (not counting warm connections, dialed ahead).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8),
		}),
		loginSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "imapgw_login_seconds", Help: "Time from credentials to the answer, failure delay included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9),
		}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imapgw_panics_total", Help: "Panics recovered in sessions.",
		}),
	}
	m.toBackend = m.relayBytes.WithLabelValues("client_to_backend")
	m.toClient = m.relayBytes.WithLabelValues("backend_to_client")
	m.preauth = m.sessions.WithLabelValues(statePreauth)
	m.relaying = m.sessions.WithLabelValues(stateRelaying)
	m.loginsBy = map[string]prometheus.Counter{}
	for _, o := range []string{outcomeOK, outcomeFailed, outcomeRejected, outcomeRefused, outcomeUnavailable, outcomeTimeout} {
		m.loginsBy[o] = m.logins.WithLabelValues(o)
	}
	// The parker is the process's (park_linux.go): one gateway per process.
	parked := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "imapgw_relay_parked", Help: "Relay directions parked without a goroutine after a quiet second (Linux): two per idle session.",
	}, func() float64 { return float64(parkedRelays()) })
	if reg != nil {
		reg.MustRegister(m.connections, m.sessions, m.logins, m.relayBytes, m.dial, m.loginSeconds, m.panics, parked)
	}
	return m
}

// login counts one login attempt with outcome.
func (m *metrics) login(outcome string) {
	if c, ok := m.loginsBy[outcome]; ok {
		c.Inc()
		return
	}
	m.logins.WithLabelValues(outcome).Inc()
}

func counterValue(c prometheus.Counter) float64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		return 0
	}
	return d.GetCounter().GetValue()
}
