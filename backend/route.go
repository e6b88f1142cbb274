package backend

import (
	"time"

	"github.com/imapgw/imapgw/conf"
)

// Route returns the servers to try for user, best first, and why the first
// was chosen: "affinity" (the server of its open or recent sessions), "map"
// (the map file), "hash" (weighted rendezvous hashing of the lower-cased user
// among up, undrained servers) or "first" (route = "first": config order).
// The others follow in hash (or config) order, for failover before the
// credentials are sent. Empty: no server is up.
func (p *Pool) Route(user string) (order []*Server, reason string) {
	return p.RouteInto(nil, user)
}

// RouteInto is Route appending to dst: a caller reusing a buffer routes
// without allocating (added to the POOL_API.md contract for that).
func (p *Pool) RouteInto(dst []*Server, user string) (order []*Server, reason string) {
	var buf [maxKey]byte
	key := lowerKey(user, &buf)
	now := p.now()
	p.mu.RLock()
	start := len(dst)
	order, reason = p.route(dst, key, now)
	p.mu.RUnlock()
	if p.shares() && len(order) > start {
		_, reason = p.sharedRoute(order[start:], key, reason)
	}
	return order, reason
}

// route is RouteInto for a lower-cased key; p.mu is held.
func (p *Pool) route(dst []*Server, key string, now time.Time) ([]*Server, string) {
	start := len(dst)
	dst = p.order(dst, key)
	if len(dst) == start {
		return dst, ""
	}
	first, reason := p.choose(key, now)
	if first == nil {
		if p.cfg.Route == conf.RouteFirst {
			return dst, "first"
		}
		return dst, "hash"
	}
	// first is usable, so it is in the list: move it to the front.
	for i := start; i < len(dst); i++ {
		if dst[i] == first {
			copy(dst[start+1:i+1], dst[start:i])
			dst[start] = first
			break
		}
	}
	return dst, reason
}

// choose finds the server of key's affinity, else of its map entry, when that
// server is up and not draining.
func (p *Pool) choose(key string, now time.Time) (*Server, string) {
	if u := p.users[key]; u != nil && u.pinned(now) {
		if s := p.byName[u.pin]; s != nil && s.usable() {
			return s, "affinity"
		}
	}
	if name, ok := p.umap.lookup(key); ok {
		if s := p.byName[name]; s != nil && s.usable() {
			return s, "map"
		}
	}
	return nil, ""
}

// maxStackScores is how many servers order ranks without allocating.
const maxStackScores = 64

// order appends the usable servers to dst: by rendezvous score for key,
// highest first, or in config order with route = "first".
func (p *Pool) order(dst []*Server, key string) []*Server {
	if p.cfg.Route == conf.RouteFirst {
		for _, s := range p.servers {
			if s.usable() {
				dst = append(dst, s)
			}
		}
		return dst
	}
	var buf [maxStackScores]float64
	scores := buf[:0]
	if len(p.servers) > len(buf) {
		scores = make([]float64, 0, len(p.servers))
	}
	start := len(dst)
	h := fnv1a(key)
	for _, s := range p.servers {
		if !s.usable() {
			continue
		}
		dst = append(dst, s)
		scores = append(scores, score(h, s.nameHash, s.weight))
		// Insertion sort: a handful of servers; equal scores keep config order.
		for j := len(scores) - 1; j > 0 && scores[j] > scores[j-1]; j-- {
			scores[j], scores[j-1] = scores[j-1], scores[j]
			dst[start+j], dst[start+j-1] = dst[start+j-1], dst[start+j]
		}
	}
	return dst
}
