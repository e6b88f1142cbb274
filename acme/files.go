package acme

import (
	"context"
	"os"
	"time"
)

// fileStamp is what a cheap stat tells about a file: enough to notice a
// replacement, including a symlink switched to a new target (certbot's
// live/ directory).
type fileStamp struct {
	size    int64 // -1: stat failed
	modTime int64 // Unix nanoseconds
}

// fileStamps are the cert and key files' stamps.
type fileStamps [2]fileStamp

func stampFiles(s *settings) fileStamps {
	return fileStamps{stamp(s.certFile), stamp(s.keyFile)}
}

func stamp(name string) fileStamp {
	fi, err := os.Stat(name)
	if err != nil {
		return fileStamp{size: -1}
	}
	return fileStamp{size: fi.Size(), modTime: fi.ModTime().UnixNano()}
}

// fileWatch remembers the files' state, guarded by Manager.mu.
type fileWatch struct {
	seen    fileStamps // when last loaded or tried
	pending fileStamps // a change seen once, loaded when seen again unchanged
	waiting bool
}

// pollFiles checks the files every PollInterval until ctx is done.
func (m *Manager) pollFiles(ctx context.Context) {
	every := m.opts.PollInterval
	if every <= 0 {
		every = defaultPollInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.checkFiles()
		}
	}
}

// checkFiles reloads the files once a change has held still for one poll:
// a replacement is often two writes (chain, then key), and loading between
// them would log a spurious mismatch. A pair that failed is not retried
// until the files change again, so a broken pair is logged once.
func (m *Manager) checkFiles() {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.cur.Load()
	if s.source != sourceFiles {
		return
	}
	now := stampFiles(s)
	switch {
	case now == m.watch.seen:
		m.watch.waiting = false
	case !m.watch.waiting || now != m.watch.pending:
		m.watch.pending, m.watch.waiting = now, true
	default:
		m.watch.waiting = false
		if err := m.reloadLocked(s, "files changed"); err != nil {
			m.filesFailed(err)
		}
	}
}

// reloadLocked loads s's files and, if they are valid, serves them from the
// next handshake on. The caller holds m.mu (or owns m, in New).
func (m *Manager) reloadLocked(s *settings, why string) error {
	// stamp before reading, so a change during the read is seen next poll
	st := stampFiles(s)
	c, err := loadFiles(s.certFile, s.keyFile, m.now())
	if err != nil {
		if s == m.cur.Load() { // not for a rejected Update's files
			m.watch.seen = st
		}
		return err
	}
	m.watch.seen = st
	m.static.Store(c)
	m.log.Info("certificate loaded", "source", sourceFiles, "reason", why,
		"cert_file", s.certFile, "names", c.info.Names, "not_after", c.info.NotAfter, "issuer", c.info.Issuer)
	if err := c.cert.Leaf.VerifyHostname(s.hostname); err != nil {
		m.log.Warn("the certificate does not cover server.hostname; clients will reject it",
			"cert_file", s.certFile, "hostname", s.hostname, "names", c.info.Names)
	}
	return nil
}

// filesFailed reports a failed reload. The error names the file at fault.
func (m *Manager) filesFailed(err error) {
	m.metrics.errors.Inc()
	m.log.Error("certificate files not loaded; still serving the previous certificate", "error", err)
}
