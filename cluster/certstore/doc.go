// Package certstore is a certmagic.Storage on Redis (or Valkey), so that the
// gateways of one fleet share their ACME account, certificates and the locks
// around obtaining and renewing them: one node orders a certificate, the
// others wait on the lock, find it in storage and load it.
//
// Layout, under the fleet's key prefix (all keys share the hash tag
// {certmagic}, so Lua scripts and transactions stay in one slot of a Redis
// Cluster):
//
//	PREFIX{certmagic}:k:KEY     hash: v = value, m = modification time (Unix ns)
//	PREFIX{certmagic}:index     sorted set of every KEY (score 0), for List and
//	                            directory semantics by lexical range
//	PREFIX{certmagic}:lock:NAME string: the holder's random token, with a TTL
//
// Stored values have no TTL: they are the certificates and the ACME account,
// data rather than cache (certmagic deletes what it no longer needs). Locks
// always have one: a holder refreshes its lock while it holds it, so a long
// ACME order keeps it, and the lock of a holder that crashed expires within
// the TTL. Unlock deletes only a lock whose token is this holder's (Lua
// compare-and-delete), never one that expired and was taken over.
package certstore
