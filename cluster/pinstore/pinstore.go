// Package pinstore keeps the backend pool's user pinning in Redis (or
// Valkey), shared by the gateways of a fleet: every node sends a user to the
// server its sessions are on, and none splits a user's concurrent sessions
// across servers. It implements backend.AffinityStore.
//
// One hash per user, PREFIX pin:USER, with fields
//
//	s         the pinned server
//	u         when the pin ends while no session is open (Unix ms)
//	m         "1" when the operator moved the user there
//	a         the affinity (ms) last reported, for sessions of a dead node
//	c:NODE    NODE's open sessions of the user
//	e:NODE    when NODE's count runs out unless renewed (Unix ms)
//
// Every script reads Redis's own clock (TIME), so the nodes' clocks do not
// matter, and sets the key's TTL to the latest of u and the live leases plus
// the affinity: no key outlives its pin. A node that crashes stops renewing; its counts run
// out after the lease and count as sessions that ended then.
package pinstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/imapgw/imapgw/backend"
)

// Options tune a Store; the zero value is the production default.
type Options struct {
	// Lease is how long a node's session counts live without renewal. It
	// must outlast the pool's AffinityRefresh (default 20s) by a margin.
	// Default 60s.
	Lease time.Duration
}

const defaultLease = 60 * time.Second

// Store is a backend.AffinityStore on Redis. Safe for concurrent use.
type Store struct {
	rc     redis.UniversalClient
	prefix string
	node   string
	lease  time.Duration
}

var _ backend.AffinityStore = (*Store)(nil)

// New returns the store of node (this gateway's cluster.node) keeping its
// keys in rc under prefix (cluster.key_prefix).
func New(rc redis.UniversalClient, prefix, node string, o Options) *Store {
	if o.Lease <= 0 {
		o.Lease = defaultLease
	}
	return &Store{rc: rc, prefix: prefix + "pin:", node: node, lease: o.Lease}
}

func (s *Store) key(user string) string { return s.prefix + user }

// lib is shared by the scripts: Redis's clock, the live session count
// (reaping dead nodes' leases: their sessions count as ended when the lease
// ran out) and the key's TTL.
const lib = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function live(key, now)
  local h = redis.call('HGETALL', key)
  local f = {}
  for i = 1, #h, 2 do f[h[i]] = h[i + 1] end
  local n, last = 0, 0
  local u = tonumber(f['u']) or 0
  local a = tonumber(f['a']) or 0
  for k, v in pairs(f) do
    if string.sub(k, 1, 2) == 'e:' then
      local node, e = string.sub(k, 3), tonumber(v)
      if e > now then
        n = n + (tonumber(f['c:' .. node]) or 0)
        if e > last then last = e end
      else
        redis.call('HDEL', key, k, 'c:' .. node)
        if e + a > u then u = e + a end
      end
    end
  end
  if f['s'] and u ~= (tonumber(f['u']) or 0) then redis.call('HSET', key, 'u', u) end
  return n, last, u
end
-- expire keeps the key while the pin can hold: until u, or until the
-- latest lease plus the affinity (its sessions may end with its node).
local function expire(key, now, last, u)
  local a = tonumber(redis.call('HGET', key, 'a')) or 0
  if last > 0 then last = last + a end
  local t = math.max(u, last) - now
  if t <= 0 then redis.call('DEL', key) else redis.call('PEXPIRE', key, t) end
end
`

// pickScript: ARGV want, reserve ms. Returns {server, sessions, until, moved, fresh}.
var pickScript = redis.NewScript(lib + `
local key = KEYS[1]
local now = now_ms()
local n, last, u = live(key, now)
local s = redis.call('HGET', key, 's')
if s and (n > 0 or u > now) then
  return {s, n, u, redis.call('HGET', key, 'm') or '0', 0}
end
if ARGV[1] == '' then
  expire(key, now, last, 0)
  return {'', 0, 0, '0', 0}
end
u = now + tonumber(ARGV[2])
redis.call('HSET', key, 's', ARGV[1], 'u', u, 'm', '0')
expire(key, now, last, u)
return {ARGV[1], n, u, '0', 1}
`)

// reportScript: ARGV node, count, server, lease ms, affinity ms. Returns
// the live count across nodes.
var reportScript = redis.NewScript(lib + `
local key, node, c = KEYS[1], ARGV[1], tonumber(ARGV[2])
local now = now_ms()
-- A session's server replaces a reservation or a move, whose end no
-- longer applies: the pin now lasts while sessions do, then the affinity.
if ARGV[3] ~= '' then redis.call('HSET', key, 's', ARGV[3], 'm', '0', 'u', 0) end
redis.call('HSET', key, 'a', ARGV[5])
if c > 0 then
  redis.call('HSET', key, 'c:' .. node, c, 'e:' .. node, now + tonumber(ARGV[4]))
else
  redis.call('HDEL', key, 'c:' .. node, 'e:' .. node)
end
local n, last, u = live(key, now)
if n == 0 and redis.call('HEXISTS', key, 's') == 1 then
  u = math.max(u, now + tonumber(ARGV[5]))
  redis.call('HSET', key, 'u', u)
end
expire(key, now, last, u)
return n
`)

// moveScript: ARGV server, affinity ms.
var moveScript = redis.NewScript(lib + `
local key = KEYS[1]
local now = now_ms()
local n, last = live(key, now)
local u = now + tonumber(ARGV[2])
redis.call('HSET', key, 's', ARGV[1], 'm', '1', 'u', u, 'a', ARGV[2])
expire(key, now, last, u)
return n
`)

// Pick implements backend.AffinityStore: one round trip.
func (s *Store) Pick(ctx context.Context, user, want string, reserve time.Duration) (backend.Pin, error) {
	res, err := pickScript.Run(ctx, s.rc, []string{s.key(user)}, want, reserve.Milliseconds()).Slice()
	if err != nil {
		return backend.Pin{}, fmt.Errorf("pinstore: pick: %w", err)
	}
	if len(res) != 5 {
		return backend.Pin{}, errors.New("pinstore: pick: malformed reply")
	}
	server, _ := res[0].(string)
	n, _ := res[1].(int64)
	until, _ := res[2].(int64)
	moved, _ := res[3].(string)
	fresh, _ := res[4].(int64)
	pin := backend.Pin{Server: server, Sessions: int(n), Moved: moved == "1", Fresh: fresh == 1}
	if until > 0 {
		pin.Until = time.UnixMilli(until)
	}
	return pin, nil
}

// Report implements backend.AffinityStore: one round trip.
func (s *Store) Report(ctx context.Context, user string, sessions int, server string, affinity time.Duration) error {
	err := reportScript.Run(ctx, s.rc, []string{s.key(user)}, s.node, strconv.Itoa(sessions), server,
		s.lease.Milliseconds(), affinity.Milliseconds()).Err()
	if err != nil {
		return fmt.Errorf("pinstore: report: %w", err)
	}
	return nil
}

// Move implements backend.AffinityStore.
func (s *Store) Move(ctx context.Context, user, server string, affinity time.Duration) error {
	if err := moveScript.Run(ctx, s.rc, []string{s.key(user)}, server, affinity.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("pinstore: move: %w", err)
	}
	return nil
}
