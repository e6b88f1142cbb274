package main

import (
	"crypto/tls"
	"fmt"

	"github.com/imapgw/imapgw/bench/loadgen"
)

// hybrid measures what the post-quantum hybrid key exchange costs imapgw: full
// handshakes (connect, handshake, close) from 8 clients, once with the bench's
// X25519-only client and once with Go's default curves, which put
// X25519MLKEM768 first. HAProxy 2.6 on OpenSSL 3.0 does not offer it, so the
// side-by-side table uses X25519 for all and this cost is reported on its own.
func (b *bench) hybrid(g peer) error {
	if err := g.start(); err != nil {
		return fmt.Errorf("starting %s: %w", g.name(), err)
	}
	defer g.stop()
	for _, k := range []struct {
		key    string
		curves []tls.CurveID
	}{{"hs.x25519", []tls.CurveID{tls.X25519}}, {"hs.mlkem", nil}} {
		t := b.target(g)
		t.TLS.CurvePreferences = k.curves
		s, err := t.Open()
		if err != nil {
			return err
		}
		group := s.TLSState().CurveID
		s.Close()
		loadgen.Loop(8, b.opt.warmup, t.Handshake)
		var st loadgen.Stats
		cpu := b.withCPU(g, k.key, func() { st = loadgen.Loop(8, b.opt.dur, t.Handshake) })
		b.recordRate(k.key, st.Rate(), cpu, st.Ops)
		b.res.setTLS(k.key, group.String())
		if st.Errors > 0 {
			b.res.note("imapgw %s: %d failed handshakes, first: %v", k.key, st.Errors, st.FirstErr)
		}
	}
	return nil
}

// hybridTable reports the two handshakes' cost side by side.
func hybridTable(r *results) string {
	x, ok1 := r.median(nameImapgw, "hs.x25519.cpu")
	m, ok2 := r.median(nameImapgw, "hs.mlkem.cpu")
	if !ok1 || !ok2 {
		return ""
	}
	xr, _ := r.median(nameImapgw, "hs.x25519")
	mr, _ := r.median(nameImapgw, "hs.mlkem")
	var out string
	out += "| key exchange (negotiated) | handshakes/s, 8 clients | imapgw CPU per handshake, µs |\n|---|--:|--:|\n"
	out += fmt.Sprintf("| %s | %.0f | %.0f |\n", r.tls["hs.x25519"], xr, x)
	out += fmt.Sprintf("| %s | %.0f | %.0f |\n", r.tls["hs.mlkem"], mr, m)
	out += fmt.Sprintf("\nThe hybrid key exchange costs imapgw %.0f µs more CPU per full handshake (%.2f×).\n", m-x, m/x)
	return out
}
