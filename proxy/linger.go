package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"time"
)

// A lingering close (issue 10.3). After a BYE the gateway reads no more, but the
// client may still be sending: the rest of an oversized line, a literal,
// pipelined commands. A socket closed with unread input sends a reset, and the
// client's stack discards what it has not read yet, the BYE included; a client
// still blocked writing its 200 KB line never reads it at all. So the session
// half-closes (close_notify, then FIN) and discards what the client sends until
// it closes too, bounded in time and bytes, as Apache's lingering_close does.
//
// lingerTime is a few round trips on a slow mobile link and ends any wait well
// within a drain. lingerBytes covers a client that writes a whole oversized line
// or a non-synchronizing literal of up to a megabyte before reading. Either
// bound costs a hostile client no more than it already gets: the session keeps
// its admission slot (per source and in total) while it lingers, and draining
// a megabyte is a few hundred reads into a shared buffer.
const (
	lingerTime  = 2 * time.Second
	lingerBytes = 1 << 20
)

// linger half-closes the client connection and discards its input until the
// client closes, lingerTime passes, lingerBytes arrived or the server shuts down.
// The caller closes the socket afterwards.
func (s *session) linger() {
	deadline := time.Now().Add(lingerTime)
	if tc, ok := s.conn.(*tls.Conn); ok {
		// close_notify sets its own 5 s write deadline; the timer holds it to
		// lingerTime against a client that does not read.
		t := time.AfterFunc(lingerTime, func() { s.raw.SetWriteDeadline(time.Now()) })
		err := tc.CloseWrite()
		t.Stop()
		if err != nil {
			return
		}
	}
	tcp, ok := s.raw.(*net.TCPConn)
	if !ok || tcp.CloseWrite() != nil {
		return
	}
	tcp.SetReadDeadline(deadline)
	if s.srv.ctx.Err() != nil {
		return // shutting down: close now (interrupt cuts a linger already under way)
	}
	// The raw socket, not the TLS layer: the bytes are thrown away, so there is
	// nothing to decrypt; io.Discard reads them into a pooled buffer.
	io.CopyN(io.Discard, tcp, lingerBytes)
}
