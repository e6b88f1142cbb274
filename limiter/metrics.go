package limiter

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the limiter's own Prometheus series (DESIGN: the package that
// counts registers). They count even when no registry is given.
type metrics struct {
	bansTotal *prometheus.CounterVec
}

func newMetrics(l *Limiter, reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		bansTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imapgw_bans_total",
			Help: "Bans made, by reason (failures, spray, manual).",
		}, []string{"reason"}),
	}
	for _, r := range []string{ReasonFailures, ReasonSpray, ReasonManual} {
		m.bansTotal.WithLabelValues(r) // present at 0 from the start
	}
	active := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "imapgw_bans",
		Help: "Active bans.",
	}, l.activeBans)
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.bansTotal, active} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering limiter metrics: %w", err)
		}
	}
	return m, nil
}

// banned counts one ban; reason is a fixed label value, never operator text.
func (m *metrics) banned(reason string) { m.bansTotal.WithLabelValues(reason).Inc() }

func (l *Limiter) activeBans() float64 {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bans.expire(now)
	return float64(l.bans.len())
}
