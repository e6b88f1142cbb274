package cluster

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	up       prometheus.Gauge
	latency  prometheus.Histogram
	errors   *prometheus.CounterVec
	received prometheus.Counter
}

// Operations counted in imapgw_cluster_errors_total; fixed label values.
var ops = []string{"connect", "heartbeat", "subscribe", "failure", "known_good", "success", "ban", "lift", "load"}

func newMetrics(c *Cluster, reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imapgw_cluster_up",
			Help: "1 while Redis answers the heartbeat, 0 while the local policy decides alone.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "imapgw_cluster_latency_seconds",
			Help:    "Time of each round trip to Redis.",
			Buckets: []float64{.0002, .0005, .001, .002, .005, .01, .025, .05, .1, .25, 1},
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imapgw_cluster_errors_total",
			Help: "Redis operations that failed or timed out, by operation.",
		}, []string{"op"}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imapgw_cluster_bans_received_total",
			Help: "Bans and lifts made by other nodes and applied here.",
		}),
	}
	for _, op := range ops {
		m.errors.WithLabelValues(op)
	}
	if reg == nil {
		return m, nil
	}
	for _, col := range []prometheus.Collector{m.up, m.latency, m.errors, m.received} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("registering cluster metrics: %w", err)
		}
	}
	return m, nil
}
