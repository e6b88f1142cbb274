package proxy

import (
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// logThrottle decides which of many like events get a log line: the first from
// a peer, then at most one per interval, carrying how many events there were
// since the previous line. A flood from one peer is then one line a minute, not
// one per connection, while the metric counts every event. The table is
// bounded; a peer pushed out of it just logs again on its next event.
type logThrottle struct {
	every time.Duration

	mu    sync.Mutex
	peers *simplelru.LRU[netip.Addr, *throttled]
}

type throttled struct {
	last time.Time // when the peer's last line was written
	n    int       // events since then, not yet in a line
}

// throttleTable bounds the peers a logThrottle remembers (a few dozen bytes each).
const throttleTable = 4096

func newLogThrottle(every time.Duration) *logThrottle {
	peers, err := simplelru.NewLRU[netip.Addr, *throttled](throttleTable, nil)
	if err != nil {
		panic(err) // only for a size <= 0
	}
	return &logThrottle{every: every, peers: peers}
}

// note records one event from peer at now. It reports whether to write a line,
// and how many events that line stands for (this one included).
func (t *logThrottle) note(peer netip.Addr, now time.Time) (log bool, events int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.peers.Get(peer)
	if !ok {
		t.peers.Add(peer, &throttled{last: now})
		return true, 1
	}
	e.n++
	if now.Sub(e.last) < t.every {
		return false, 0
	}
	events = e.n
	e.last, e.n = now, 0
	return true, events
}
