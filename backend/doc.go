// Package backend is the IMAP servers behind the gateway: dialing them (TCP,
// PROXY header, implicit TLS or STARTTLS, greeting, pre-login CAPABILITY),
// health checks, routing each user to one server (weighted rendezvous hashing
// of the lower-cased user, a map file, affinity to the server of its open
// sessions) and drain, move and kick for operators (issue 12).
//
// It knows nothing of client sockets and does not log in: package proxy asks
// Route where a user goes, dials with Server.Dial, replays the login itself and
// reports the session with SessionStarted. A session is closed through the
// closeFn proxy registers, never by injecting bytes into a relayed stream.
package backend
