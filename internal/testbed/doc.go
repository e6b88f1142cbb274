// Package testbed starts real components for tests: the Debian Dovecot as an IMAP
// backend (one, or several sharing one mail root like a cluster on shared
// storage, whose logs tell who logged in where), a server that accepts and never
// greets, an imitation of Exchange 2016/2019's IMAP4 service (written from public
// transcripts: no Exchange runs on Linux), a throwaway certificate authority with
// leaf certificates, and helpers to check that the binaries a test needs are installed.
//
// It is test infrastructure only: production code must not import it. Every
// component it starts is a child of the test process, uses its own temporary
// directory and free loopback ports, and is stopped in t.Cleanup.
package testbed
