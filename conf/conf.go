// Package conf loads imapgw's TOML configuration strictly: unknown keys, bad
// durations, addresses and CIDRs, and impossible combinations are errors that name
// the file, the line and the key. Defaults live in Default and nowhere else.
// It does not open sockets or read certificates; it only describes them.
package conf

import (
	"net/netip"
	"time"
)

// Config is the whole configuration file. Field comments give the default that
// Default sets; a key missing from the file keeps it.
type Config struct {
	Server  Server   `toml:"server"`
	Listen  []Listen `toml:"listen"`
	TLS     TLS      `toml:"tls"`
	ACME    ACME     `toml:"acme"`
	Backend Backend  `toml:"backend"`
	Auth    Auth     `toml:"auth"`
	Limits  Limits   `toml:"limits"`
	Bans    Bans     `toml:"bans"`
	Cluster Cluster  `toml:"cluster"`
	Admin   Admin    `toml:"admin"`
	Log     Log      `toml:"log"`

	// Path is the file the config was read from ("" when built in code).
	Path string `toml:"-"`
}

// Server holds process-wide settings.
type Server struct {
	Hostname       string         `toml:"hostname"`        // default: the machine's hostname; greeting and no-SNI certificate
	StateDir       string         `toml:"state_dir"`       // default "/var/lib/imapgw": ACME data and ban state
	TrustedProxies []netip.Prefix `toml:"trusted_proxies"` // default none: PROXY headers believed only from these
	DrainTimeout   Duration       `toml:"drain_timeout"`   // default 30s: relayed sessions get this long on shutdown
}

// Listen is one [[listen]] table.
type Listen struct {
	Address       string `toml:"address"`        // required, host:port
	TLS           string `toml:"tls"`            // "implicit" (default) or "starttls"
	ProxyProtocol bool   `toml:"proxy_protocol"` // default false: every connection starts with a PROXY header
}

// Listener TLS modes and certificate sources.
const (
	TLSImplicit = "implicit"
	TLSStartTLS = "starttls"
	TLSNone     = "none"

	CertACME       = "acme"
	CertFiles      = "files"
	CertSelfSigned = "self-signed"
)

// TLS selects where certificates come from.
type TLS struct {
	Certificate string   `toml:"certificate"` // "acme" (default), "files" or "self-signed"
	CertFile    string   `toml:"cert_file"`   // with "files": PEM chain
	KeyFile     string   `toml:"key_file"`    // with "files": PEM key
	Names       []string `toml:"names"`       // more SNI names; the hostname is always one
	MinVersion  string   `toml:"min_version"` // "1.2" (default) or "1.3"
}

// ACME configures certificates from an ACME CA.
type ACME struct {
	CA                      string `toml:"ca"`                         // default Let's Encrypt production
	CARoot                  string `toml:"ca_root"`                    // PEM file trusted for the CA's own HTTPS; "" = system roots
	Email                   string `toml:"email"`                      // required with certificate = "acme"
	HTTPChallengeAddress    string `toml:"http_challenge_address"`     // default ":80"; "" disables HTTP-01
	TLSALPNChallengeAddress string `toml:"tls_alpn_challenge_address"` // default ""; e.g. ":443" enables TLS-ALPN-01
}

// Backend describes the IMAP servers behind the gateway.
type Backend struct {
	// Servers is the short form: each "host:port" is a server of weight 100 named
	// by its address. Default ["127.0.0.1:143"]; cleared when [[backend.server]]
	// tables are given (a file may not set both).
	Servers []string `toml:"servers"`
	// Server is the long form, [[backend.server]] tables; their empty keys take
	// the [backend] values below (tls, tls_server_name, client_ip, …).
	Server         []BackendServer `toml:"server"`
	Route          string          `toml:"route"`           // "user" (default): weighted rendezvous hash of the lower-cased user; "first": the first healthy server in order
	Affinity       Duration        `toml:"affinity"`        // default 15m: a user stays on its server this long after its last session ends (0: only while sessions are open)
	CheckInterval  Duration        `toml:"check_interval"`  // default 5s between health checks of each server
	CheckTimeout   Duration        `toml:"check_timeout"`   // default 3s: one health check, dial to LOGOUT
	Fall           int             `toml:"fall"`            // default 2 consecutive failed checks (or data-path dial failures) mark a server down
	Rise           int             `toml:"rise"`            // default 2 consecutive good checks mark it up again
	MapFile        string          `toml:"map_file"`        // default "": no map; lines "user@dom server" or "@dom server" win over hashing
	TLS            string          `toml:"tls"`             // "none" (default), "implicit" or "starttls"
	TLSServerName  string          `toml:"tls_server_name"` // default: the host part of the server address
	TLSCAFile      string          `toml:"tls_ca_file"`     // default: system roots
	TLSSkipVerify  bool            `toml:"tls_skip_verify"` // default false
	ClientIP       string          `toml:"client_ip"`       // "id" (default), "proxy-v2", "proxy-v1" or "none"
	ConnectTimeout Duration        `toml:"connect_timeout"` // default 5s: dial, TLS, greeting and pre-login commands (CAPABILITY, STARTTLS)
	// LoginTimeout, default 30s, bounds the wait for the backend's answer once the
	// credentials are sent (continuations included; an ID carrying the client's
	// address goes in the same write, so its answer too). Dovecot answers a failed login
	// after auth_failure_delay (2s) plus its auth penalty (up to 15s per address),
	// so it must stay above 17s or attackers' failures look like outages (issue 10).
	LoginTimeout Duration `toml:"login_timeout"`
	// WarmConnections, default 2, is how many connections per server the
	// gateway keeps dialed and greeted ahead of logins while logins come in,
	// so that a login sends its credentials at once instead of waiting for a
	// connect, TLS and the greeting (on Dovecot, the start of a login
	// process). Only for client_ip "id" and "none": a PROXY header names the
	// client when the connection opens. 0: every login dials.
	WarmConnections int `toml:"warm_connections"`
}

// BackendServer is one [[backend.server]] table. Empty strings (and an absent
// tls_skip_verify) take the [backend] value.
type BackendServer struct {
	Name          string `toml:"name"`            // required, unique; used by the admin API, the CLI and the map file
	Address       string `toml:"address"`         // required, host:port
	Weight        int    `toml:"weight"`          // default 100; share of users relative to the others
	TLS           string `toml:"tls"`             // default backend.tls
	TLSServerName string `toml:"tls_server_name"` // default backend.tls_server_name, else the host of address
	TLSCAFile     string `toml:"tls_ca_file"`     // default backend.tls_ca_file
	TLSSkipVerify *bool  `toml:"tls_skip_verify"` // default backend.tls_skip_verify
	ClientIP      string `toml:"client_ip"`       // default backend.client_ip
}

// DefaultWeight is a server's weight when none is given (and every short-form server's).
const DefaultWeight = 100

// Backend routes.
const (
	RouteUser  = "user"
	RouteFirst = "first"
)

// How the client's address is passed to the backend.
const (
	ClientIPID      = "id"
	ClientIPProxyV2 = "proxy-v2"
	ClientIPProxyV1 = "proxy-v1"
	ClientIPNone    = "none"
)

// Limits bound what one client and the whole gateway may use.
type Limits struct {
	PreauthTimeout               Duration `toml:"preauth_timeout"`                  // default 30s per pre-auth line (or TLS handshake), from when the wait begins
	IdleTimeout                  Duration `toml:"idle_timeout"`                     // default 31m after login
	MaxLine                      int      `toml:"max_line"`                         // default 8192 bytes
	MaxLiteral                   int      `toml:"max_literal"`                      // default 8192 bytes
	MaxConnections               int      `toml:"max_connections"`                  // default 100000
	MaxConnectionsPerSource      int      `toml:"max_connections_per_source"`       // default 50
	ConnectionRate               float64  `toml:"connection_rate"`                  // default 20 per second per source
	MaxAuthFailuresPerConnection int      `toml:"max_auth_failures_per_connection"` // default 3
}

// Bans is the failed-login policy.
type Bans struct {
	Enabled         bool           `toml:"enabled"`          // default true
	Allow           []netip.Prefix `toml:"allow"`            // default loopback: never limited or banned
	SourcePrefixV4  int            `toml:"source_prefix_v4"` // default 32
	SourcePrefixV6  int            `toml:"source_prefix_v6"` // default 64
	FailureDelay    Duration       `toml:"failure_delay"`    // default 2s (+ jitter)
	SourceFailures  int            `toml:"source_failures"`  // default 10 in source_window
	SourceWindow    Duration       `toml:"source_window"`    // default 1h
	SprayAccounts   int            `toml:"spray_accounts"`   // default 4 accounts in source_window
	Ban             Duration       `toml:"ban"`              // default 15m, ×4 per repeat
	MaxBan          Duration       `toml:"max_ban"`          // default 168h
	AccountFailures int            `toml:"account_failures"` // default 20 per hour
	AccountProtect  Duration       `toml:"account_protect"`  // default 24h
	MaxTracked      int            `toml:"max_tracked"`      // default 262144 entries per table
	// AccountKey is how a login name becomes the account that account_failures,
	// protected mode, known-good networks and spray_accounts count (issue 11):
	//   "user" (default): the name lower-cased, as today.
	//   "local-part": also drops an Exchange shared mailbox ("user@dom\shared@dom":
	//     the identity is the part before the first \ or /, when that part has an @)
	//     and then everything from the last @: alice, Alice@corp and
	//     alice@corp\shared@corp are one account (Dovecot's auth_default_realm).
	//   "strip-realm": local-part, and a Windows domain too ("CORP\alice",
	//     "corp/alice\shared": the second part): alice, alice@corp and CORP\alice
	//     are one account (Exchange).
	// A name that would become empty keeps its lower-cased form.
	AccountKey string `toml:"account_key"`

	// Firewall mirrors the bans into the kernel (issue 15): "none" (default) or
	// "nftables", which needs CAP_NET_ADMIN. FirewallTable is the inet table
	// imapgw owns (default "imapgw"); FirewallCleanup removes it on shutdown
	// (default false: the elements' timeouts keep them honest).
	Firewall        string `toml:"firewall"`
	FirewallTable   string `toml:"firewall_table"`
	FirewallCleanup bool   `toml:"firewall_cleanup"`
}

// bans.firewall values.
const (
	FirewallNone     = "none"
	FirewallNftables = "nftables"
)

// bans.account_key values.
const (
	AccountKeyUser       = "user"
	AccountKeyLocalPart  = "local-part"
	AccountKeyStripRealm = "strip-realm"
)

// Admin is the operator's HTTP endpoint. Every request's Host must be its
// address (as bound) or one of Names, so a web page that rebinds its own
// DNS name to the endpoint cannot read it (issue 11, point 5).
type Admin struct {
	Address   string   `toml:"address"`    // default "127.0.0.1:9993"; "" disables
	TokenFile string   `toml:"token_file"` // bearer token; required when address is not loopback
	Names     []string `toml:"names"`      // default none: more host names or addresses (any port) accepted as Host, e.g. behind a proxy
	TLS       string   `toml:"tls"`        // "none" (default), "gateway" (the IMAP certificate, from tls.certificate) or "files"
	CertFile  string   `toml:"cert_file"`  // with tls = "files": PEM chain, re-read when it changes
	KeyFile   string   `toml:"key_file"`   // with tls = "files": PEM key
	CAFile    string   `toml:"ca_file"`    // for `imapgw bans`/`status` only: PEM roots to verify the endpoint; "" = system roots
}

// AdminTLSGateway is admin.tls = "gateway": the admin endpoint serves the
// certificate the IMAP listeners serve. ("none" and "files" are TLSNone and
// CertFiles.)
const AdminTLSGateway = "gateway"

// Log configures log/slog.
type Log struct {
	Level  string `toml:"level"`  // "debug", "info" (default), "warn", "error"
	Format string `toml:"format"` // "text" (default) or "json"
}

// Default returns the configuration every file starts from.
func Default() *Config {
	return &Config{
		Server: Server{
			Hostname:     defaultHostname(),
			StateDir:     "/var/lib/imapgw",
			DrainTimeout: D(30 * time.Second),
		},
		TLS: TLS{Certificate: CertACME, MinVersion: "1.2"},
		ACME: ACME{
			CA:                   "https://acme-v02.api.letsencrypt.org/directory",
			HTTPChallengeAddress: ":80",
		},
		Backend: Backend{
			Servers:         []string{"127.0.0.1:143"},
			TLS:             TLSNone,
			ClientIP:        ClientIPID,
			ConnectTimeout:  D(5 * time.Second),
			LoginTimeout:    D(30 * time.Second),
			Route:           RouteUser,
			Affinity:        D(15 * time.Minute),
			CheckInterval:   D(5 * time.Second),
			CheckTimeout:    D(3 * time.Second),
			Fall:            2,
			Rise:            2,
			WarmConnections: 2,
		},
		Limits: Limits{
			PreauthTimeout:               D(30 * time.Second),
			IdleTimeout:                  D(31 * time.Minute),
			MaxLine:                      8192,
			MaxLiteral:                   8192,
			MaxConnections:               100000,
			MaxConnectionsPerSource:      50,
			ConnectionRate:               20,
			MaxAuthFailuresPerConnection: 3,
		},
		Bans: Bans{
			Enabled:         true,
			Allow:           []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
			SourcePrefixV4:  32,
			SourcePrefixV6:  64,
			FailureDelay:    D(2 * time.Second),
			SourceFailures:  10,
			SourceWindow:    D(time.Hour),
			SprayAccounts:   4,
			Ban:             D(15 * time.Minute),
			MaxBan:          D(168 * time.Hour),
			AccountFailures: 20,
			AccountProtect:  D(24 * time.Hour),
			MaxTracked:      262144,
			AccountKey:      AccountKeyUser,
			Firewall:        FirewallNone,
			FirewallTable:   "imapgw",
		},
		Cluster: Cluster{KeyPrefix: "imapgw:", Timeout: D(100 * time.Millisecond), Node: defaultHostname()},
		Admin:   Admin{Address: "127.0.0.1:9993", TLS: TLSNone},
		Log:     Log{Level: "info", Format: "text"},
	}
}

// defaultListen is applied to a [[listen]] table before its keys are read.
func defaultListen() Listen { return Listen{TLS: TLSImplicit} }
