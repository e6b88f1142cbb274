package conf

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Cluster is [cluster]: several gateways share bans, failure counts and account
// protection through Redis or Valkey (issue 13). Redis "" is a single node.
type Cluster struct {
	// Redis is "redis://[user:password@]host:6379/0", "rediss://…" (TLS) or
	// "redis-sentinel://[:password@]host:26379,host2:26379/mymaster[?db=0]";
	// default "": single node, nothing shared.
	Redis        string   `toml:"redis"`
	PasswordFile string   `toml:"password_file"` // default "": the password, if any, is in the URL
	KeyPrefix    string   `toml:"key_prefix"`    // default "imapgw:": several fleets may share one Redis
	Timeout      Duration `toml:"timeout"`       // default 100ms: the longest a login waits on Redis
	Node         string   `toml:"node"`          // default: the machine's hostname
}

// Enabled reports whether the gateway is one node of a cluster.
func (c Cluster) Enabled() bool { return c.Redis != "" }

// Redis URL schemes.
const (
	RedisPlain    = "redis"
	RedisTLS      = "rediss"
	RedisSentinel = "redis-sentinel"
)

// RedisEndpoint is cluster.redis taken apart. Password is the one in the URL
// (cluster.password_file is read by the cluster package at start).
type RedisEndpoint struct {
	Scheme   string   // RedisPlain, RedisTLS or RedisSentinel
	Addrs    []string // host:port; several only for Sentinel
	Master   string   // Sentinel: the master's name
	DB       int
	Username string
	Password string
}

// Endpoint parses cluster.redis. Its errors never contain the password.
func (c Cluster) Endpoint() (RedisEndpoint, error) {
	var e RedisEndpoint
	scheme, rest, ok := strings.Cut(c.Redis, "://")
	if !ok {
		return e, fmt.Errorf("%q is not a redis://, rediss:// or redis-sentinel:// URL", RedactURL(c.Redis))
	}
	e.Scheme = scheme
	if scheme != RedisPlain && scheme != RedisTLS && scheme != RedisSentinel {
		return e, fmt.Errorf("scheme %q is not one of redis, rediss, redis-sentinel", scheme)
	}
	rest, query, _ := strings.Cut(rest, "?")
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		user, pass, _ := strings.Cut(rest[:i], ":")
		e.Username, e.Password = unescape(user), unescape(pass)
		rest = rest[i+1:]
	}
	hosts, path, _ := strings.Cut(rest, "/")
	if hosts == "" {
		return e, fmt.Errorf("%q names no host", RedactURL(c.Redis))
	}
	for _, h := range strings.Split(hosts, ",") {
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(h, defaultRedisPort(scheme))
		}
		host, port, err := net.SplitHostPort(h)
		if p, perr := strconv.Atoi(port); err != nil || perr != nil || p <= 0 || p > 65535 || host == "" {
			return e, fmt.Errorf("%q has a bad host:port", RedactURL(c.Redis))
		}
		e.Addrs = append(e.Addrs, h)
	}
	if scheme != RedisSentinel && len(e.Addrs) > 1 {
		return e, fmt.Errorf("%q names several hosts: only redis-sentinel:// takes a list", RedactURL(c.Redis))
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return e, fmt.Errorf("%q has a bad query", RedactURL(c.Redis))
	}
	db := strings.TrimSuffix(path, "/")
	if scheme == RedisSentinel {
		if e.Master = db; e.Master == "" {
			return e, fmt.Errorf("%q names no master: redis-sentinel://host:26379,host2:26379/mymaster", RedactURL(c.Redis))
		}
		db = q.Get("db")
	}
	if db != "" {
		if e.DB, err = strconv.Atoi(db); err != nil || e.DB < 0 {
			return e, fmt.Errorf("%q: database %q is not a number", RedactURL(c.Redis), db)
		}
	}
	return e, nil
}

func defaultRedisPort(scheme string) string {
	if scheme == RedisSentinel {
		return "26379"
	}
	return "6379"
}

func unescape(s string) string {
	if u, err := url.PathUnescape(s); err == nil {
		return u
	}
	return s
}

// RedactURL is a Redis URL as logs, errors and the admin API show it: any
// password replaced by "xxxxx".
func RedactURL(s string) string {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		if strings.Contains(s, "@") {
			return "xxxxx"
		}
		return s
	}
	i := strings.LastIndex(rest, "@")
	if i < 0 {
		return s
	}
	user, _, hasPass := strings.Cut(rest[:i], ":")
	if !hasPass {
		return s
	}
	return scheme + "://" + user + ":xxxxx" + rest[i:]
}

func (v *validator) cluster(c *Cluster) {
	if c.Redis == "" {
		return
	}
	e, err := c.Endpoint()
	if err != nil {
		v.fail("cluster.redis", "%s", err)
	}
	if c.PasswordFile != "" {
		if e.Password != "" {
			v.fail("cluster.password_file", "is set, yet cluster.redis has a password too: keep one")
		}
		if _, err := os.Stat(c.PasswordFile); err != nil {
			v.fail("cluster.password_file", "%q cannot be read: %v", c.PasswordFile, errorsWithoutPath(err))
		}
	}
	// Braces are allowed: with Redis Cluster, "{imapgw}:" keeps a script's keys in one slot.
	if strings.ContainsAny(c.KeyPrefix, " \t\r\n") {
		v.fail("cluster.key_prefix", "%q has a space or a line break", c.KeyPrefix)
	}
	if d := c.Timeout.Duration; d <= 0 || d > 10*time.Second {
		v.fail("cluster.timeout", "must be between 0 and 10s, got %s", c.Timeout)
	}
	if c.Node == "" || strings.ContainsAny(c.Node, " \t\r\n:{}") || len(c.Node) > 128 {
		v.fail("cluster.node", "%q is not a node name (no spaces, colons or braces, at most 128 bytes)", c.Node)
	}
}

// errorsWithoutPath drops the path os.Stat puts in its error (the key and file
// are already named).
func errorsWithoutPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}
