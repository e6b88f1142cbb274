package backend

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseMap(t *testing.T) {
	known := func(s string) bool { return s == "imap1" || s == "imap3" }
	tests := []struct {
		in      string
		users   map[string]string
		domains map[string]string
		err     string // substring; "" no error
	}{
		{in: "", users: map[string]string{}, domains: map[string]string{}},
		{in: "# comment\n\n   \nalice@example.com imap3\n@example.org imap1\n",
			users: map[string]string{"alice@example.com": "imap3"}, domains: map[string]string{"example.org": "imap1"}},
		{in: "Alice@Example.COM imap3 # trailing comment\n\t@EXAMPLE.org\timap1",
			users: map[string]string{"alice@example.com": "imap3"}, domains: map[string]string{"example.org": "imap1"}},
		{in: "bob imap1\r\n", users: map[string]string{"bob": "imap1"}, domains: map[string]string{}},
		{in: "alice@example.com\n", err: "m:1: want \"user server\""},
		{in: "ok imap1\nalice@example.com imap3 extra\n", err: "m:2: want"},
		{in: "alice@example.com imap9\n", err: `m:1: "imap9" is not a configured server`},
		{in: "a imap1\n\nA imap3\n", err: `m:3: "A" is listed twice`},
		{in: "@ imap1\n", err: `m:1: "@" is not a domain`},
		{in: "@a@b imap1\n", err: `m:1: "@a@b" is not a domain`},
		{in: "#only imap1\n", users: map[string]string{}, domains: map[string]string{}},
	}
	for _, tc := range tests {
		m, err := parseMap("m", []byte(tc.in), known)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseMap(%q) error = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseMap(%q) = %v", tc.in, err)
			continue
		}
		if !equalMaps(m.users, tc.users) || !equalMaps(m.domains, tc.domains) {
			t.Errorf("parseMap(%q) = %v %v, want %v %v", tc.in, m.users, m.domains, tc.users, tc.domains)
		}
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestMapFileReload: a bad map file fails New naming file:line; an edit is
// picked up when its stamp changes; a bad edit keeps the old map and is
// logged once; Reload re-reads it.
func TestMapFileReload(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "users.map")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(name, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b := backendConf(srv("imap1", 100), srv("imap2", 100))
	b.MapFile = name
	write("bob@example.com imap1\nalice@example.com imap7\n")
	if _, err := New(b, Options{}); err == nil || !strings.Contains(err.Error(), name+":2:") {
		t.Fatalf("New with a bad map = %v, want an error naming %s:2", err, name)
	}
	write("alice@example.com imap1\n")
	p, logs := newPool(t, b, nil)
	if got := p.Where(alice); got.Backend != "imap1" || got.Reason != "map" {
		t.Fatalf("Where = %+v, want imap1 by map", got)
	}
	p.reloadMap() // unchanged: nothing
	if strings.Contains(logs.String(), "map file") {
		t.Fatalf("unchanged map reloaded: %s", logs)
	}
	write("alice@example.com imap2\n")
	bump(t, name)
	p.reloadMap()
	if got := p.Where(alice); got.Backend != "imap2" || got.Reason != "map" {
		t.Fatalf("after the edit, Where = %+v, want imap2 by map", got)
	}
	write("alice@example.com imap1\nbroken line here\n")
	bump(t, name)
	p.reloadMap()
	p.reloadMap()
	if got := p.Where(alice); got.Backend != "imap2" {
		t.Errorf("after a bad edit, Where = %+v, want the old map's imap2", got)
	}
	if n := strings.Count(logs.String(), "keeping the previous map"); n != 1 || !strings.Contains(logs.String(), name+":2:") {
		t.Errorf("bad edit logged %d times, want once naming %s:2; log:\n%s", n, name, logs)
	}
	if err := p.Reload(b); err == nil || !strings.Contains(err.Error(), name+":2:") {
		t.Errorf("Reload with the bad map = %v, want an error naming %s:2", err, name)
	}
	write("@example.com imap1\n")
	bump(t, name)
	if err := p.Reload(b); err != nil {
		t.Fatal(err)
	}
	if got := p.Where(alice); got.Backend != "imap1" || got.Reason != "map" {
		t.Errorf("after Reload, Where = %+v, want imap1 by map", got)
	}
}

// bump moves the file's mtime forward, as an edit a second later would: the
// test does not rely on the file system's time granularity.
func bump(t *testing.T, name string) {
	t.Helper()
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	mt := fi.ModTime().Add(time.Second)
	if err := os.Chtimes(name, mt, mt); err != nil {
		t.Fatal(err)
	}
}
