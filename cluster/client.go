package cluster

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/imapgw/imapgw/conf"
)

// PoolSize bounds the pooled connections a node opens to Redis (besides
// the subscription's own): a login waits at most cluster.timeout for one,
// so more would only add load on a Redis that is already slow. MaxIdleConns
// of them are kept when idle.
const (
	PoolSize     = 16
	MaxIdleConns = 4
)

// newClient builds the go-redis UniversalClient for cluster.redis: one
// server, TLS, or a Sentinel-watched master. Its errors never contain the
// password.
func newClient(c conf.Cluster) (redis.UniversalClient, error) {
	e, err := c.Endpoint()
	if err != nil {
		return nil, fmt.Errorf("cluster.redis: %w", err)
	}
	password := e.Password
	if c.PasswordFile != "" {
		data, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("cluster.password_file: %w", err)
		}
		password = strings.TrimRight(string(data), "\r\n")
	}
	o := &redis.UniversalOptions{
		Addrs:      e.Addrs,
		DB:         e.DB,
		Username:   e.Username,
		Password:   password,
		MasterName: e.Master,
		// RESP2 and no CLIENT SETINFO or MAINT_NOTIFICATIONS: one command
		// set that Redis 6+, 7 and Valkey all answer alike.
		Protocol:                 2,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		// Every call carries its own deadline (cluster.timeout on a login's
		// path); a retry would only spend it on a server that is away.
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		// Bursts (a reconnect's reload and push, many logins at once) grow
		// the pool; beyond this many idle connections are closed when given
		// back, so a node holds a handful of connections to Redis, not up
		// to PoolSize (10 per CPU) for ever.
		PoolSize:     PoolSize,
		MaxIdleConns: MaxIdleConns,
		DialTimeout:  time.Second,
		ReadTimeout:  2 * time.Second,
		WriteTimeout: 2 * time.Second,
	}
	if e.Scheme == conf.RedisTLS {
		host, _, _ := net.SplitHostPort(e.Addrs[0])
		o.TLSConfig = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	}
	return redis.NewUniversalClient(o), nil
}
