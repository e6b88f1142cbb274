package admin

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/imapgw/imapgw/limiter"
)

// ListenerInfo describes one IMAP listener for the status page.
type ListenerInfo struct {
	Address       string // as configured (listen.address)
	Bound         string // the bound address; "" when it is not open
	TLS           string // "implicit" or "starttls"
	ProxyProtocol bool
}

// maxSessionRows bounds the session table: at 100,000 sessions the page
// shows counts, and the newest rows.
const maxSessionRows = 50

// pageView is everything the page template shows.
type pageView struct {
	CSRF       string
	TokenAuth  bool // a token is configured: the page offers "log out"
	Refresh    int  // milliseconds between refreshes of the live part
	Now        time.Time
	Started    time.Time
	Ready      bool
	Draining   bool
	Listeners  []listenerRow
	Certs      []CertStats
	Backends   []BackendInfo
	HasPool    bool
	Preauth    int
	Relaying   int
	ByBackend  []countRow
	Sessions   []SessionInfo // newest first, at most maxSessionRows
	MoreRows   int           // sessions not in the table
	Logins     loginChart
	Bans       []banRow
	Firewall   bool // bans.firewall is on: the bans table says what the kernel drops
	Flash      *flash
	Form       BanRequest // the ban form's values after a refused ban
	StatsError string
}

type listenerRow struct {
	ListenerInfo
	Sessions int
}

type countRow struct {
	Name  string
	Count int
}

type banRow struct {
	limiter.Ban
	Lift   string // the address the lift form sends: the prefix's first
	Kernel string // with bans.firewall: "dropped" or "not yet"; else ""
}

// view gathers the page's data for session sid.
func (s *Server) view(sid string) pageView {
	now := s.o.Now()
	v := pageView{
		CSRF: s.csrfToken(sid), TokenAuth: s.token != nil, Refresh: int(uiRefresh / time.Millisecond),
		Now: now, Started: s.started, Ready: s.ready(), Draining: s.draining(),
		Certs: certStats(s.certs(), now), HasPool: s.o.Backends != nil, Firewall: s.o.InKernel != nil,
	}
	if s.o.Backends != nil {
		v.Backends = s.o.Backends.Servers()
	}
	s.sessionView(&v)
	s.bansView(&v, now)
	if err := s.sampleLogins(); err != nil {
		v.StatsError = err.Error()
	}
	v.Logins = chart(s.ui.logins.perMinute(now))
	return v
}

func (s *Server) sessionView(v *pageView) {
	list := s.sessionList()
	byListener := map[string]int{}
	byBackend := map[string]int{}
	for _, si := range list {
		byListener[si.Listener]++
		if si.State == "relaying" {
			v.Relaying++
			byBackend[si.Backend]++
		} else {
			v.Preauth++
		}
	}
	if s.o.Listeners != nil {
		for _, l := range s.o.Listeners() {
			v.Listeners = append(v.Listeners, listenerRow{l, byListener[l.Address]})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(byBackend)) {
		v.ByBackend = append(v.ByBackend, countRow{name, byBackend[name]})
	}
	slices.Reverse(list) // newest first: what just happened
	if len(list) > maxSessionRows {
		v.MoreRows = len(list) - maxSessionRows
		list = list[:maxSessionRows]
	}
	v.Sessions = list
}

func (s *Server) bansView(v *pageView, now time.Time) {
	bans := s.o.Bans.Bans()
	slices.SortFunc(bans, func(a, b limiter.Ban) int { return cmp.Compare(b.Since.UnixNano(), a.Since.UnixNano()) })
	for _, b := range bans {
		if !b.Until.After(now) {
			continue
		}
		row := banRow{Ban: b, Lift: b.Prefix.Masked().Addr().String()}
		if s.o.InKernel != nil {
			row.Kernel = "not yet"
			if s.o.InKernel(b.Prefix) {
				row.Kernel = "dropped"
			}
		}
		v.Bans = append(v.Bans, row)
	}
}

// sampleLogins records the current login totals in the per-minute ring.
func (s *Server) sampleLogins() error {
	if s.o.Gatherer == nil {
		return nil
	}
	fams, err := s.o.Gatherer.Gather()
	if err != nil && len(fams) == 0 {
		return fmt.Errorf("gathering metrics: %w", err)
	}
	s.ui.logins.record(s.o.Now(), sumBy(fams, metricLogins, "outcome"))
	return nil
}

// loginSampleEvery is how often the ring is fed while nobody looks at the page.
const loginSampleEvery = 5 * time.Second

// sampleLoop feeds the ring until stop is closed.
func (s *Server) sampleLoop(stop <-chan struct{}) {
	t := time.NewTicker(loginSampleEvery)
	defer t.Stop()
	for {
		s.sampleLogins()
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// The chart: one stacked bar per minute, outcomes in a fixed order.
const (
	chartBarW   = 10
	chartHeight = 60
)

var chartOutcomes = []struct{ key, class, label string }{
	{"ok", "ok", "ok"},
	{"failed", "failed", "failed"},
	{"refused", "refused", "refused by policy"},
	{"", "other", "other (rejected, error, timeout)"},
}

type loginChart struct {
	Width, Height int
	Bars          []chartBar
	Total         map[string]uint64 // over the whole chart, by class
	Max           uint64
}

type chartBar struct {
	X, W  int
	Title string
	Rects []chartRect
}

type chartRect struct {
	Y, H  int
	Class string
}

func chart(mins []loginMinute) loginChart {
	c := loginChart{Width: len(mins) * chartBarW, Height: chartHeight, Total: map[string]uint64{}}
	perClass := make([]map[string]uint64, len(mins))
	for i, m := range mins {
		perClass[i] = map[string]uint64{}
		var sum uint64
		for k, n := range m.Counts {
			cl := outcomeClass(k)
			perClass[i][cl] += n
			c.Total[cl] += n
			sum += n
		}
		c.Max = max(c.Max, sum)
	}
	for i, m := range mins {
		bar := chartBar{X: i * chartBarW, W: chartBarW - 2}
		y := chartHeight
		title := m.Minute.UTC().Format("15:04") + " UTC:"
		for _, o := range chartOutcomes {
			n := perClass[i][o.class]
			title += fmt.Sprintf(" %s %d", o.class, n)
			if n == 0 || c.Max == 0 {
				continue
			}
			h := max(1, int(n*chartHeight/c.Max))
			y -= h
			bar.Rects = append(bar.Rects, chartRect{Y: y, H: h, Class: o.class})
		}
		bar.Title = title
		c.Bars = append(c.Bars, bar)
	}
	return c
}

func outcomeClass(outcome string) string {
	for _, o := range chartOutcomes {
		if o.key == outcome {
			return o.class
		}
	}
	return "other"
}

// ago formats the time since t for a table cell: "3m12s".
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return now.Sub(t).Round(time.Second).String()
}

// left formats the time until t: "14m58s", or "expired".
func left(now, t time.Time) string {
	d := t.Sub(now).Round(time.Second)
	if d <= 0 {
		return "expired"
	}
	return d.String()
}
