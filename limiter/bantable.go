package limiter

import (
	"container/heap"
	"net/netip"
	"time"
)

// banTable holds the bans. It is not an LRU because the entry to give up when
// it is full is the ban that ends soonest, not the one looked at least recently
// (issue 3, rule 8): a min-heap on Until finds it, and finds expired bans first.
// Lookups try every prefix length in use, so bans made under an older
// source_prefix, or loaded from disk, still cover the addresses they name.
type banTable struct {
	byPrefix map[netip.Prefix]*banEntry
	ends     banHeap
	lens     [2]prefixLens // [0] IPv4, [1] IPv6
}

type banEntry struct {
	Ban
	index int // in ends
}

func newBanTable() banTable {
	return banTable{byPrefix: make(map[netip.Prefix]*banEntry)}
}

func (t *banTable) len() int { return len(t.byPrefix) }

// lookup returns the active ban covering a (unmapped), or nil.
func (t *banTable) lookup(a netip.Addr, now time.Time) *banEntry {
	for _, bits := range t.lens[family(a)].bits {
		p, err := a.Prefix(bits)
		if err != nil {
			continue
		}
		if e := t.byPrefix[p]; e != nil && now.Before(e.Until) {
			return e
		}
	}
	return nil
}

// put adds b or replaces the ban on the same prefix.
func (t *banTable) put(b Ban) {
	if e := t.byPrefix[b.Prefix]; e != nil {
		e.Ban = b
		heap.Fix(&t.ends, e.index)
		return
	}
	e := &banEntry{Ban: b}
	t.byPrefix[b.Prefix] = e
	heap.Push(&t.ends, e)
	t.lens[family(b.Prefix.Addr())].add(b.Prefix.Bits())
}

func (t *banTable) remove(p netip.Prefix) {
	if e := t.byPrefix[p]; e != nil {
		heap.Remove(&t.ends, e.index)
		t.drop(e)
	}
}

func (t *banTable) drop(e *banEntry) {
	delete(t.byPrefix, e.Prefix)
	t.lens[family(e.Prefix.Addr())].remove(e.Prefix.Bits())
}

// expire forgets bans that have ended.
func (t *banTable) expire(now time.Time) {
	for len(t.ends) > 0 && !now.Before(t.ends[0].Until) {
		t.drop(heap.Pop(&t.ends).(*banEntry))
	}
}

// trim gives up the bans ending soonest until at most n are left, and returns them.
func (t *banTable) trim(n int) []Ban {
	var out []Ban
	for len(t.ends) > max(n, 0) {
		e := heap.Pop(&t.ends).(*banEntry)
		t.drop(e)
		out = append(out, e.Ban)
	}
	return out
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// prefixLens counts the bans per prefix length, and lists the lengths in use.
type prefixLens struct {
	count [129]int
	bits  []int
}

func (s *prefixLens) add(bits int) {
	if s.count[bits]++; s.count[bits] == 1 {
		s.bits = append(s.bits, bits)
	}
}

func (s *prefixLens) remove(bits int) {
	if s.count[bits]--; s.count[bits] > 0 {
		return
	}
	for i, b := range s.bits {
		if b == bits {
			s.bits = append(s.bits[:i], s.bits[i+1:]...)
			return
		}
	}
}

// banHeap is a container/heap of bans, the soonest ending first.
type banHeap []*banEntry

func (h banHeap) Len() int           { return len(h) }
func (h banHeap) Less(i, j int) bool { return h[i].Until.Before(h[j].Until) }
func (h banHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *banHeap) Push(x any) {
	e := x.(*banEntry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *banHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}
