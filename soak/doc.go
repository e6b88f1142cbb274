// Package soak holds the load test of issue 7: thousands of concurrent IMAP
// sessions (IDLE, FETCH, fresh logins) through in-process gateways in front of
// the in-memory backend and a real Dovecot, while an attacker floods from
// another source. It runs only with -soak (make soak); it is not a library.
package soak
