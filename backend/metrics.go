package backend

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	up        *prometheus.GaugeVec   // backend
	sessions  *prometheus.GaugeVec   // backend
	logins    *prometheus.CounterVec // backend, outcome
	check     *prometheus.HistogramVec
	failovers prometheus.Counter
	warm      *prometheus.CounterVec // backend, outcome
	warmReady *prometheus.GaugeVec   // backend
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imapgw_backend_up", Help: "1 when the backend server passes its health checks, 0 when it is down.",
		}, []string{"backend"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imapgw_backend_sessions", Help: "Relayed sessions open on each backend server.",
		}, []string{"backend"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imapgw_backend_logins_total", Help: "Logins by backend server and outcome (ok, failed, rejected, error, timeout).",
		}, []string{"backend", "outcome"}),
		check: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "imapgw_backend_check_duration_seconds", Help: "Time of one health check: dial, greeting, STARTTLS, LOGOUT.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8),
		}, []string{"backend"}),
		failovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imapgw_backend_failovers_total", Help: "Logins that went on to the next server after a failed dial or greeting.",
		}),
		warm: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imapgw_backend_warm_total",
			Help: "Warm connections (backend.warm_connections) by server and outcome: hit (a login took one), miss (none was ready: the login dialed), " +
				"expired, stale (the server closed it or spoke), unused (closed: server down or draining), failed (its dial failed).",
		}, []string{"backend", "outcome"}),
		warmReady: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imapgw_backend_warm_connections", Help: "Warm connections ready for a login on each backend server (backend.warm_connections).",
		}, []string{"backend"}),
	}
	if reg != nil {
		reg.MustRegister(m.up, m.sessions, m.logins, m.check, m.failovers, m.warm, m.warmReady)
	}
	return m
}
