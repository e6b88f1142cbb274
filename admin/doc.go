// Package admin is the operator's HTTP endpoint (DESIGN.md, "Admin HTTP API"):
// health and readiness probes, the Prometheus registry it is handed, the bans
// and per-source state of the policy, the active sessions, counters, and a
// config reload; JSON in and out, behind a bearer token compared in constant
// time, over HTTP or HTTPS. GET / is a status page for the browser (ui.go),
// which trades the token for a signed session cookie and guards its forms
// with a CSRF token. Whether or not a token is set, it answers only
// requests whose Host is its own address or admin.names, and changes state
// only on application/json requests, so a web page on the operator's machine
// can neither read it (DNS rebinding) nor drive it (issue 11, point 5).
// Client is the same API from the other side, for `imapgw bans` and
// `imapgw status`.
//
// It counts nothing itself and does not import the data path: the parts it
// reads arrive as small interfaces and funcs that package main wires in.
package admin
