package limiter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	l1, _ := newTest(t, nil, Options{StateDir: dir})
	auto := addr("192.0.2.1")
	first := failN(l1, t0, auto, "alice", 10)
	second := failN(l1, first.Until, auto, "alice", 10) // strike 2: 1h
	manual := l1.AddBanAt(first.Until, addr("2001:db8::1"), 2*time.Hour, "abuse feed")
	lapsed := addr("198.51.100.1")
	failN(l1, first.Until.Add(-5*time.Minute), lapsed, "bob", 10) // ends at first.Until+10m
	if err := l1.Save(); err != nil {
		t.Fatalf("Save: %v", err)
	}

	now := first.Until.Add(30 * time.Minute) // auto and manual still running, lapsed ended
	l2, _ := newTest(t, nil, Options{StateDir: dir, Now: func() time.Time { return now }})
	got := l2.Bans() // sorted: IPv4 first
	if len(got) != 2 || got[1].Prefix != manual.Prefix || !got[1].Until.Equal(manual.Until) ||
		got[1].Reason != "abuse feed" || got[1].Source != SourceManual ||
		got[0].Prefix.Addr() != auto || !got[0].Until.Equal(second.Until) || got[0].Strikes != 2 ||
		got[0].Reason != ReasonFailures || got[0].Source != SourceAuto {
		t.Errorf("Bans() after reload = %+v, want the 2h manual ban and the 2-strike auto ban until %v", got, second.Until)
	}
	if err := admitErr(l2, now, auto); !errors.Is(err, ErrBanned) {
		t.Errorf("AdmitAt(%v) after reload = %v, want %v", auto, err, ErrBanned)
	}
	if s := l2.SourceAt(now, lapsed); s.Ban != nil || s.Strikes != 1 {
		t.Errorf("SourceAt(%v) after reload = %+v, want no ban, 1 strike", lapsed, s)
	}
	if v := failN(l2, second.Until, auto, "alice", 10); v.Until.Sub(second.Until) != 4*time.Hour {
		t.Errorf("third ban after reload lasts %v, want 4h", v.Until.Sub(second.Until))
	}
}

func TestStateCorruptMovedAside(t *testing.T) {
	tests := []struct{ name, content string }{
		{"not json", "{truncated"},
		{"wrong version", `{"version": 99, "bans": []}`},
		{"unmasked prefix", `{"version": 1, "bans": [{"prefix": "192.0.2.1/24", "until": "2999-01-01T00:00:00Z", "reason": "x", "source": "auto"}]}`},
		{"unknown source", `{"version": 1, "bans": [{"prefix": "192.0.2.1/32", "until": "2999-01-01T00:00:00Z", "reason": "x", "source": "guess"}]}`},
		{"bad strikes", `{"version": 1, "strikes": [{"prefix": "192.0.2.1/32", "strikes": 0}]}`},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		path := filepath.Join(dir, stateFile)
		if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
			t.Fatal(err)
		}
		logs := &logBuf{}
		l, _ := newTest(t, nil, Options{StateDir: dir, Logger: logs.logger()})
		if got := l.Bans(); len(got) != 0 {
			t.Errorf("%s: Bans() = %v, want none", tt.name, got)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %s still in place (stat err %v), want it moved aside", tt.name, stateFile, err)
		}
		aside, _ := filepath.Glob(path + ".corrupt-*")
		if len(aside) != 1 {
			t.Fatalf("%s: files moved aside = %v, want one", tt.name, aside)
		}
		if b, _ := os.ReadFile(aside[0]); string(b) != tt.content {
			t.Errorf("%s: moved-aside content = %q, want %q", tt.name, b, tt.content)
		}
		if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "corrupt") {
			t.Errorf("%s: log = %q, want an error about the corrupt file", tt.name, logs.String())
		}
	}
}

// TestStateDirUnwritable replaces the state dir with a file, which stops writes
// for root as well as for anyone else.
func TestStateDirUnwritable(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	logs := &logBuf{}
	l, _ := newTest(t, nil, Options{StateDir: dir, Logger: logs.logger()})
	src := addr("192.0.2.1")
	failN(l, t0, src, "alice", 10)
	if err := os.WriteFile(dir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := l.Save(); err == nil {
		t.Errorf("Save into a state dir that is a file: err = nil, want an error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l.Run(ctx) // saves once at the end, fails, logs
	if !strings.Contains(logs.String(), "ban state not saved") {
		t.Errorf("log after Run = %q, want the failed save reported", logs.String())
	}
	if err := admitErr(l, t0, src); !errors.Is(err, ErrBanned) {
		t.Errorf("AdmitAt after a failed save = %v, want %v", err, ErrBanned)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	l.Run(ctx) // retried: the state is still unsaved
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err != nil {
		t.Errorf("state file after the dir came back: %v, want it written", err)
	}
}

func TestRunSavesOnlyChanges(t *testing.T) {
	dir := t.TempDir()
	l, _ := newTest(t, nil, Options{StateDir: dir})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l.Run(ctx)
	path := filepath.Join(dir, stateFile)
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file after Run with no change: stat err %v, want none written", err)
	}
	l.AddBanAt(t0, addr("192.0.2.1"), time.Hour, "")
	l.Run(ctx)
	st, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(st), `"192.0.2.1/32"`) {
		t.Errorf("state file after Run = %q, %v; want the ban in it", st, err)
	}
	if tmp, _ := filepath.Glob(filepath.Join(dir, "*.tmp-*")); len(tmp) != 0 {
		t.Errorf("temp files left behind: %v", tmp)
	}
}

func TestNoStateDir(t *testing.T) {
	l, _ := newTest(t, nil, Options{})
	l.AddBanAt(t0, addr("192.0.2.1"), time.Hour, "")
	if err := l.Save(); err != nil {
		t.Errorf("Save without a state dir = %v, want nil", err)
	}
}
