package firewall

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	errors prometheus.Counter
}

func newMetrics(f *Firewall, reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{errors: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "imapgw_firewall_errors_total",
		Help: "Netlink batches the kernel refused or that could not be sent (each is retried as a rebuild).",
	})}
	elems := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "imapgw_firewall_elements",
		Help: "Bans in the kernel's nftables sets (one per prefix), as the last successful batch left them.",
	}, f.elementsInKernel)
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.errors, elems} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering firewall metrics: %w", err)
		}
	}
	return m, nil
}
