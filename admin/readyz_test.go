package admin

import (
	"strings"
	"sync/atomic"
	"testing"
)

// TestReadyzDraining: once Draining reports true, /readyz answers 503 saying
// so though a certificate is loaded, /healthz still 200, and the stats' ready
// flag is false.
func TestReadyzDraining(t *testing.T) {
	var draining atomic.Bool
	f := newFixture(t, func(o *Options) { o.Draining = draining.Load })
	if code, _, body := f.call(t, "GET", "/readyz", "", ""); code != 200 {
		t.Fatalf("GET /readyz before the drain = %d %s, want 200", code, body)
	}
	draining.Store(true)
	code, _, body := f.call(t, "GET", "/readyz", "", "")
	if e := errorBody(t, body); code != 503 || !strings.Contains(e.Error, "draining") {
		t.Errorf("GET /readyz while draining = %d %s, want 503 saying draining", code, body)
	}
	if code, _, body := f.call(t, "GET", "/healthz", "", ""); code != 200 {
		t.Errorf("GET /healthz while draining = %d %s, want 200", code, body)
	}
	_, _, body = f.call(t, "GET", "/api/v1/stats", "Bearer "+testToken, "")
	if !strings.Contains(body, `"ready": false`) {
		t.Errorf("GET /api/v1/stats while draining = %s, want \"ready\": false", body)
	}
}
