package cluster

import (
	"github.com/redis/go-redis/v9"
)

// Keys (all under cluster.key_prefix, all with a TTL but the ban index, which
// is trimmed at every write and expires with its last ban):
//
//	src:<prefix>        sorted set of "<user>:<secret>" failures by time, TTL source_window
//	acct:<user>         sorted set of failure times, TTL one hour
//	prot:<user>         protected mode's end (unix ms), TTL account_protect
//	good:<user>:<net>   known-good network, TTL 30 days
//	ban:<prefix>        the ban as JSON, TTL until it ends
//	lifted:<prefix>     a lift, TTL the lifted ban's rest: a node back from an outage does not re-push it
//	bans                index: prefix by end (unix ms)
//	node:<name>, nodes  heartbeats
//	events              the channel: bans, lifts, protections

// failureScript counts one failure for a source and its account and returns
// {distinct failures of the source, distinct accounts among them, the
// account's protected-mode end or 0}. Entering protected mode is published.
var failureScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local swin = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - swin)
redis.call('ZADD', KEYS[1], 'NX', now, ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -1025)
redis.call('PEXPIRE', KEYS[1], swin)
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local seen, accounts = {}, 0
for _, m in ipairs(members) do
  local u = string.match(m, '^[^:]*')
  if not seen[u] then seen[u] = true; accounts = accounts + 1 end
end
local awin = tonumber(ARGV[4])
local most = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - awin)
redis.call('ZADD', KEYS[2], now, ARGV[7])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(most + 1))
redis.call('PEXPIRE', KEYS[2], awin)
local untilms = tonumber(redis.call('GET', KEYS[3]) or '0')
if redis.call('ZCARD', KEYS[2]) >= most then
  local entering = untilms <= now
  untilms = now + tonumber(ARGV[6])
  redis.call('SET', KEYS[3], untilms, 'PX', ARGV[6])
  if entering then
    redis.call('PUBLISH', ARGV[8], cjson.encode({t = 'protect', u = ARGV[10], until_ms = untilms, n = ARGV[9]}))
  end
end
if untilms <= now then untilms = 0 end
return {#members, accounts, untilms}
`)

// successScript marks a network known-good for an account and forgives the
// source's failures on it.
var successScript = redis.NewScript(`
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
local p = ARGV[1] .. ':'
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(m, 1, #p) == p then redis.call('ZREM', KEYS[2], m) end
end
return 1
`)

// banScript stores a ban, indexes it, trims the index, drops the source's
// failures and any tombstone, and publishes the ban.
var banScript = redis.NewScript(`
local untilms, now = tonumber(ARGV[2]), tonumber(ARGV[3])
if untilms <= now then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', untilms - now)
redis.call('ZADD', KEYS[2], untilms, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], last[2])
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
`)

// liftScript removes a ban, leaves a tombstone for the ban's rest, and
// publishes the lift.
var liftScript = redis.NewScript(`
local now = tonumber(ARGV[2])
local untilms = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[1])
if untilms > now then redis.call('SET', KEYS[4], '1', 'PX', untilms - now) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
`)

// scripts are loaded at every connect, so that a pipeline can use EVALSHA
// and a login's first failure costs one round trip, not two.
var scripts = []*redis.Script{failureScript, successScript, banScript, liftScript}
