package admin

import (
	"fmt"
	"slices"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/imapgw/imapgw/acme"
)

// Stats is the body of GET /api/v1/stats: the counters an operator looks at
// first, summed from the metrics the data path and the policy register, so the
// two views never disagree.
type Stats struct {
	Started       time.Time         `json:"started"`
	UptimeSeconds int64             `json:"uptime_seconds"`
	Ready         bool              `json:"ready"`
	Sessions      map[string]uint64 `json:"sessions"`    // open now, by state
	Connections   map[string]uint64 `json:"connections"` // since start, by admission outcome, all listeners
	Logins        map[string]uint64 `json:"logins"`      // since start, by outcome
	RelayBytes    map[string]uint64 `json:"relay_bytes"` // since start, by direction
	Panics        uint64            `json:"panics"`
	Bans          BanStats          `json:"bans"`
	Certificates  []CertStats       `json:"certificates"`
}

// BanStats counts bans.
type BanStats struct {
	Active int               `json:"active"`
	Total  map[string]uint64 `json:"total"` // made since start, by reason
}

// CertStats is one loaded certificate.
type CertStats struct {
	Names            []string  `json:"names"`
	NotAfter         time.Time `json:"not_after"`
	ExpiresInSeconds int64     `json:"expires_in_seconds"` // negative once expired
	Issuer           string    `json:"issuer"`
	Source           string    `json:"source"` // "acme", "files" or "self-signed"
}

// The metric families Stats reads (issue 5 names them).
const (
	metricSessions    = "imapgw_sessions"
	metricConnections = "imapgw_connections_total"
	metricLogins      = "imapgw_logins_total"
	metricRelayBytes  = "imapgw_relay_bytes_total"
	metricPanics      = "imapgw_panics_total"
	metricBansTotal   = "imapgw_bans_total"
)

func (s *Server) collectStats() (Stats, error) {
	now := s.o.Now()
	st := Stats{
		Started:       s.started,
		UptimeSeconds: int64(now.Sub(s.started) / time.Second),
		Ready:         s.ready(),
		Bans:          BanStats{Active: len(s.o.Bans.Bans())},
		Certificates:  certStats(s.certs(), now),
	}
	var fams []*dto.MetricFamily
	if s.o.Gatherer != nil {
		var err error
		if fams, err = s.o.Gatherer.Gather(); err != nil && len(fams) == 0 {
			return Stats{}, fmt.Errorf("gathering metrics: %w", err)
		}
	}
	st.Sessions = sumBy(fams, metricSessions, "state")
	st.Connections = sumBy(fams, metricConnections, "outcome")
	st.Logins = sumBy(fams, metricLogins, "outcome")
	st.RelayBytes = sumBy(fams, metricRelayBytes, "direction")
	st.Panics = sumBy(fams, metricPanics, "")[""]
	st.Bans.Total = sumBy(fams, metricBansTotal, "reason")
	return st, nil
}

func (s *Server) certs() []acme.CertInfo {
	if s.o.Certs == nil {
		return nil
	}
	return s.o.Certs()
}

// certStats lists certificates soonest expiry first: the one to worry about.
func certStats(certs []acme.CertInfo, now time.Time) []CertStats {
	out := make([]CertStats, 0, len(certs))
	for _, c := range certs {
		out = append(out, CertStats{
			Names:            c.Names,
			NotAfter:         c.NotAfter,
			ExpiresInSeconds: int64(c.NotAfter.Sub(now) / time.Second),
			Issuer:           c.Issuer,
			Source:           c.Source,
		})
	}
	slices.SortFunc(out, func(a, b CertStats) int { return a.NotAfter.Compare(b.NotAfter) })
	return out
}

// sumBy adds up the counter or gauge values of family name grouped by the
// value of label ("" groups everything under ""). A missing family gives an
// empty map: the part that registers it is not running.
func sumBy(fams []*dto.MetricFamily, name, label string) map[string]uint64 {
	out := map[string]uint64{}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			out[labelValue(m, label)] += uint64(max(value(m), 0))
		}
	}
	return out
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	return 0
}
