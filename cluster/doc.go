// Package cluster shares the policy state of several imapgw nodes through
// Redis or Valkey (issue 13): bans (with their node, strikes and lifts) are
// written with their expiry to a sorted-set index and published on a channel
// that every node applies; failed logins are counted per source and per
// account in one Lua script per failure; account protection and known-good
// networks are shared the same way. It implements limiter.SharedStore and
// never makes a login wait more than cluster.timeout: when Redis is away the
// local policy decides alone (fail open) and the state converges on return.
//
// It does not store certificates or pin users to backends: cluster/certstore
// and cluster/pinstore do, on the Client this package builds.
package cluster
