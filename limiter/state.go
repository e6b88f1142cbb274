package limiter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// stateFile is the name of the ban state under server.state_dir.
const stateFile = "bans.json"

// state is what survives a restart: active bans and strike memory. Failure
// counters do not: they are cheap to rebuild and an attacker gains at most one
// window from a restart.
type state struct {
	Version int         `json:"version"`
	Bans    []Ban       `json:"bans"`
	Strikes []strikeRec `json:"strikes"` // least recently struck first
}

type strikeRec struct {
	Prefix    netip.Prefix `json:"prefix"`
	Strikes   int          `json:"strikes"`
	LastUntil time.Time    `json:"last_until"`
}

const stateVersion = 1

// Save writes the bans and strikes to server.state_dir atomically: a temp file
// in the same directory, fsync, rename over the old file, fsync the directory.
// Without a state dir it does nothing. Enforcement never depends on it.
func (l *Limiter) Save() error {
	l.saveMu.Lock()
	defer l.saveMu.Unlock()
	return l.save()
}

// save is Save with saveMu held.
func (l *Limiter) save() error {
	if l.dir == "" {
		return nil
	}
	st, gen := l.snapshot(l.now())
	data, err := json.MarshalIndent(st, "", "\t")
	if err != nil {
		return fmt.Errorf("saving ban state: %w", err)
	}
	if err := writeAtomic(l.dir, stateFile, data); err != nil {
		return fmt.Errorf("saving ban state: %w", err)
	}
	l.savedGen = gen
	return nil
}

// snapshot copies what Save writes. Walking the strike table is O(max_tracked)
// under mu; it happens at most once per save period, and only after a change.
func (l *Limiter) snapshot(now time.Time) (state, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bans.expire(now)
	st := state{Version: stateVersion, Bans: make([]Ban, 0, l.bans.len())}
	for _, e := range l.bans.ends {
		st.Bans = append(st.Bans, e.Ban)
	}
	for _, k := range l.strikes.Keys() {
		if s := l.strikesAt(k, now); s.n > 0 {
			st.Strikes = append(st.Strikes, strikeRec{Prefix: k, Strikes: s.n, LastUntil: s.until})
		}
	}
	return st, l.gen
}

// Run saves every Options.SaveEvery while state has changed, and once more when
// ctx ends. A failed save is logged and retried at the next tick; the bans stay
// enforced in memory.
func (l *Limiter) Run(ctx context.Context) {
	t := time.NewTicker(l.saveEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.saveChanged()
			return
		case <-t.C:
			l.saveChanged()
		}
	}
}

func (l *Limiter) saveChanged() {
	l.saveMu.Lock()
	defer l.saveMu.Unlock()
	l.mu.Lock()
	changed := l.gen != l.savedGen
	l.mu.Unlock()
	if !changed {
		return
	}
	if err := l.save(); err != nil {
		l.log.Error("ban state not saved; bans stay enforced in memory, retrying later",
			"dir", l.dir, "err", err)
	}
}

// writeAtomic replaces dir/name with data so that a crash leaves the old file
// or the new one, never a mix.
func writeAtomic(dir, name string, data []byte) (err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, name+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir makes the rename itself durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// load reads the state file, if any. A file that does not parse is logged,
// moved aside as bans.json.corrupt-<time> for the operator, and ignored: a
// gateway without its old bans is better than no gateway.
func (l *Limiter) load(now time.Time) error {
	if l.dir == "" {
		return nil
	}
	path := filepath.Join(l.dir, stateFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading ban state: %w", err)
	}
	st, err := parseState(data)
	if err != nil {
		l.moveAside(path, now, err)
		return nil
	}
	l.restore(now, st)
	return nil
}

func parseState(data []byte) (state, error) {
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		return st, err
	}
	if st.Version != stateVersion {
		return st, fmt.Errorf("version %d, want %d", st.Version, stateVersion)
	}
	for _, b := range st.Bans {
		if !b.Prefix.IsValid() || b.Prefix != b.Prefix.Masked() || b.Reason == "" ||
			(b.Source != SourceAuto && b.Source != SourceManual) || b.Strikes < 0 {
			return st, fmt.Errorf("bad ban entry for %q", b.Prefix)
		}
	}
	for _, s := range st.Strikes {
		if !s.Prefix.IsValid() || s.Prefix != s.Prefix.Masked() || s.Strikes < 1 {
			return st, fmt.Errorf("bad strike entry for %q", s.Prefix)
		}
	}
	return st, nil
}

func (l *Limiter) moveAside(path string, now time.Time, cause error) {
	aside := path + ".corrupt-" + now.UTC().Format("20060102T150405Z")
	if err := os.Rename(path, aside); err != nil {
		l.log.Error("ban state file is corrupt and could not be moved aside; starting without it",
			"file", path, "err", cause, "rename_err", err)
		return
	}
	l.log.Error("ban state file is corrupt; moved aside, starting without it",
		"file", path, "moved_to", aside, "err", cause)
}

// restore puts back what has not lapsed while the gateway was down.
func (l *Limiter) restore(now time.Time, st state) {
	l.mu.Lock()
	for _, s := range st.Strikes {
		if now.Before(s.LastUntil.Add(l.b.MaxBan.Duration)) {
			l.strikes.Add(s.Prefix, strike{n: s.Strikes, until: s.LastUntil})
		}
	}
	var evicted []Ban // only when max_tracked shrank while the gateway was down
	for _, b := range st.Bans {
		if now.Before(b.Until) {
			evicted = append(evicted, l.putBan(now, b)...)
		}
	}
	l.gen = 0 // what was loaded needs no saving
	bans, strikes := l.bans.len(), l.strikes.Len()
	l.mu.Unlock()
	l.logEvicted(evicted)
	l.log.Info("ban state loaded", "file", filepath.Join(l.dir, stateFile), "bans", bans, "strikes", strikes)
}
