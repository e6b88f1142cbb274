package proxy

import (
	"testing"
	"time"
)

// TestTrimmerDue walks the trimmer through bursts and lulls, one look a
// second as trimLoop makes them.
func TestTrimmerDue(t *testing.T) {
	type look struct {
		started uint64
		want    bool
	}
	quiet := func(started uint64, seconds int, trimAtEnd bool) []look {
		var ls []look
		for i := 1; i <= seconds; i++ {
			ls = append(ls, look{started, trimAtEnd && i == seconds})
		}
		return ls
	}
	join := func(parts ...[]look) []look {
		var all []look
		for _, p := range parts {
			all = append(all, p...)
		}
		return all
	}
	secs := int(trimQuiet / time.Second)
	tests := []struct {
		name  string
		looks []look
	}{
		{"burst then a full lull trims once", join(
			[]look{{0, false}, {300, false}},
			quiet(300, secs, true),
			quiet(300, 10, false),
		)},
		{"lulls shorter than trimQuiet between bursts never trim", join(
			[]look{{0, false}, {1000, false}}, quiet(1000, secs-1, false),
			[]look{{2000, false}}, quiet(2000, secs-1, false),
			[]look{{3000, false}}, quiet(3000, secs-1, false),
		)},
		{"too few sessions since the last trim", join(
			[]look{{0, false}, {trimAfter - 1, false}},
			quiet(trimAfter-1, 3*secs, false),
		)},
		{"a trickle adds up to a trim after its lull", join(
			[]look{{0, false}, {200, false}}, quiet(200, 2*secs, false),
			[]look{{300, false}}, quiet(300, secs, true),
		)},
		{"a second burst after a trim trims again", join(
			[]look{{0, false}, {400, false}}, quiet(400, secs, true),
			[]look{{500, false}}, quiet(500, secs, false),
			[]look{{700, false}}, quiet(700, secs, true),
		)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tr trimmer
			now := time.Unix(1e9, 0)
			for i, l := range tt.looks {
				now = now.Add(trimEvery)
				if got := tr.due(now, l.started); got != l.want {
					t.Fatalf("look %d (%d sessions started): due = %v, want %v", i, l.started, got, l.want)
				}
			}
		})
	}
}
