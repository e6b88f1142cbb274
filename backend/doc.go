// Package backend is the IMAP servers behind the gateway: dialing them (TCP,
// PROXY header, implicit TLS or STARTTLS, greeting, pre-login CAPABILITY),
// health checks, routing each user to one server (weighted rendezvous hashing
// of the lower-cased user, a map file, affinity to the server of its open
// sessions) and drain, move and kick for operators (issue 12).
//
// It knows nothing of client sockets and does not log in: package proxy asks
// Route where a user goes, dials with Server.Dial, replays the login itself
// (ID and credentials) and reports the session with SessionStarted. A session
// is closed through the closeFn proxy registers, never by injecting bytes
// into a relayed stream.
//
// Beyond the POOL_API.md contract, for the proxy: Server.DialFrom (the PROXY
// header's destination is the gateway address the client reached, as before
// the move), Pool.RouteInto (Route into a reused buffer: no allocation),
// Pool.CountFailover, Conn.Has, Conn.Capability, Conn.Server, Conn.Connected,
// ErrBackend, and the resolved per-server settings on Server (TLS, ClientIP,
// ConnectTimeout, LoginTimeout). A health check with client_ip = proxy-v1/v2
// sends a LOCAL (v1: UNKNOWN) header, which a haproxy = yes listener needs.
package backend
