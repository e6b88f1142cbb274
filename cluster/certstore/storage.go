package certstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"
)

// Options tune a Storage. The zero value is the production default.
type Options struct {
	// LockTTL is how long a lock lives without a refresh: the longest a
	// crashed holder blocks the others. The holder refreshes it every
	// LockTTL/3. Default 30s.
	LockTTL time.Duration
	// PollInterval is how often a waiting Lock tries again. Default 100ms.
	PollInterval time.Duration
	// Logger gets lost-lock and refresh-failure lines. Default slog.Default().
	Logger *slog.Logger
}

const (
	defaultLockTTL      = 30 * time.Second
	defaultPollInterval = 100 * time.Millisecond
)

// Storage is a certmagic.Storage (with certmagic's TryLocker and
// LockLeaseRenewer) on Redis. Its methods are safe for concurrent use.
type Storage struct {
	rc    redis.UniversalClient
	base  string // PREFIX{certmagic}:
	index string // base + "index"
	ttl   time.Duration
	poll  time.Duration
	log   *slog.Logger

	mu   sync.Mutex
	held map[string]*heldLock // lock name → this instance's hold
}

var (
	_ certmagic.Storage          = (*Storage)(nil)
	_ certmagic.TryLocker        = (*Storage)(nil)
	_ certmagic.LockLeaseRenewer = (*Storage)(nil)
)

// New returns a Storage keeping its keys in rc under prefix (the fleet's
// cluster.key_prefix, e.g. "imapgw:").
func New(rc redis.UniversalClient, prefix string, o Options) *Storage {
	if o.LockTTL <= 0 {
		o.LockTTL = defaultLockTTL
	}
	if o.PollInterval <= 0 {
		o.PollInterval = defaultPollInterval
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	base := prefix + "{certmagic}:"
	return &Storage{rc: rc, base: base, index: base + "index", ttl: o.LockTTL, poll: o.PollInterval,
		log: o.Logger, held: map[string]*heldLock{}}
}

// String names the storage in certmagic's log lines (it has no password).
func (s *Storage) String() string { return "redis:" + s.base }

// clean normalizes a certmagic key as FileStorage's path join does:
// slash-separated, no leading or trailing slash; "" is the root.
func clean(key string) string {
	k := strings.Trim(path.Clean("/"+key), "/")
	return k
}

func (s *Storage) dataKey(key string) string { return s.base + "k:" + key }

// under is the lexical range of the index holding key's descendants:
// ["key/", "key0") — '0' follows '/' in ASCII. The root's range is all.
func under(key string) (lo, hi string) {
	if key == "" {
		return "-", "+"
	}
	return "[" + key + "/", "(" + key + "0"
}

// Store puts value at key and lists key in the index, in one transaction.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	key = clean(key)
	if key == "" {
		return errors.New("certstore: empty key")
	}
	_, err := s.rc.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, s.dataKey(key), "v", value, "m", time.Now().UnixNano())
		p.ZAdd(ctx, s.index, redis.Z{Member: key})
		return nil
	})
	if err != nil {
		return fmt.Errorf("certstore: storing %s: %w", key, err)
	}
	return nil
}

// errIsDir is Load's answer for a directory, as reading one is for files.
var errIsDir = errors.New("is a directory")

// Load returns the value at key; fs.ErrNotExist when there is none.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	key = clean(key)
	v, err := s.rc.HGet(ctx, s.dataKey(key), "v").Bytes()
	if errors.Is(err, redis.Nil) {
		if s.isDir(ctx, key) {
			return nil, fmt.Errorf("certstore: %s: %w", key, errIsDir)
		}
		return nil, fmt.Errorf("certstore: %s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("certstore: loading %s: %w", key, err)
	}
	return v, nil
}

// deleteScript deletes KEYS[1] (the key's data) and every key under the
// directory ARGV[2] (the index range ARGV[3]..ARGV[4]), and drops them from
// the index KEYS[2]. Atomic, so a concurrent List never sees half of it.
var deleteScript = redis.NewScript(`
local base, key, lo, hi = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], key)
local under = redis.call('ZRANGEBYLEX', KEYS[2], lo, hi)
for _, k in ipairs(under) do
  redis.call('DEL', base .. k)
end
for i = 1, #under, 1000 do
  redis.call('ZREM', KEYS[2], unpack(under, i, math.min(i + 999, #under)))
end
return #under
`)

// Delete removes key, and everything under it when it is a directory.
// A missing key is no error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	key = clean(key)
	lo, hi := under(key)
	err := deleteScript.Run(ctx, s.rc, []string{s.dataKey(key), s.index}, s.base+"k:", key, lo, hi).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("certstore: deleting %s: %w", key, err)
	}
	return nil
}

// Exists reports whether key is a stored value or a directory (a prefix of
// stored keys). An error answers false, as FileStorage does.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	key = clean(key)
	if key != "" {
		n, err := s.rc.Exists(ctx, s.dataKey(key)).Result()
		if err == nil && n > 0 {
			return true
		}
	}
	return s.isDir(ctx, key)
}

func (s *Storage) isDir(ctx context.Context, key string) bool {
	lo, hi := under(key)
	keys, err := s.rc.ZRangeArgs(ctx, redis.ZRangeArgs{Key: s.index, Start: lo, Stop: hi, ByLex: true, Count: 1}).Result()
	return err == nil && len(keys) > 0
}

// List returns the keys under dir as FileStorage does: non-recursive, its
// direct entries (values and directories); recursive, every value and
// directory below it. A value has no entries; a missing dir is
// fs.ErrNotExist. Entries come in the order a directory walk gives.
func (s *Storage) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	prefix := clean(dir)
	lo, hi := under(prefix)
	keys, err := s.rc.ZRangeArgs(ctx, redis.ZRangeArgs{Key: s.index, Start: lo, Stop: hi, ByLex: true}).Result()
	if err != nil {
		return nil, fmt.Errorf("certstore: listing %s: %w", dir, err)
	}
	if len(keys) == 0 {
		if prefix != "" && s.Exists(ctx, prefix) {
			return nil, nil
		}
		return nil, fmt.Errorf("certstore: %s: %w", dir, fs.ErrNotExist)
	}
	seen := map[string]bool{}
	var out []string
	add := func(rel string) {
		if !seen[rel] {
			seen[rel] = true
			out = append(out, path.Join(dir, rel))
		}
	}
	for _, k := range keys {
		rel := k
		if prefix != "" {
			rel = k[len(prefix)+1:]
		}
		parts := strings.Split(rel, "/")
		if !recursive {
			add(parts[0])
			continue
		}
		for i := range parts {
			add(strings.Join(parts[:i+1], "/"))
		}
	}
	// A walk visits a directory's entries in name order, a directory
	// before its contents: compare with '/' sorting before every byte.
	walkKey := func(k string) string { return strings.ReplaceAll(k, "/", "\x00") }
	slices.SortFunc(out, func(a, b string) int { return strings.Compare(walkKey(a), walkKey(b)) })
	return out, nil
}

// Stat describes key: a value (size, modification time) or a directory;
// fs.ErrNotExist when it is neither.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	k := clean(key)
	var m *redis.StringCmd
	var size *redis.IntCmd
	_, err := s.rc.Pipelined(ctx, func(p redis.Pipeliner) error {
		m = p.HGet(ctx, s.dataKey(k), "m")
		size = p.HStrLen(ctx, s.dataKey(k), "v")
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return certmagic.KeyInfo{}, fmt.Errorf("certstore: stat %s: %w", key, err)
	}
	if ns, err := m.Result(); err == nil {
		n, _ := strconv.ParseInt(ns, 10, 64)
		return certmagic.KeyInfo{Key: key, Modified: time.Unix(0, n), Size: size.Val(), IsTerminal: true}, nil
	}
	if s.isDir(ctx, k) {
		return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
	}
	return certmagic.KeyInfo{}, fmt.Errorf("certstore: %s: %w", key, fs.ErrNotExist)
}
