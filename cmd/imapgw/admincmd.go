package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/imapgw/imapgw/admin"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/limiter"
)

// adminFlags are the flags of every command that calls the admin endpoint.
type adminFlags struct {
	fs        *flag.FlagSet
	config    *string
	addr      *string
	tokenFile *string
	caFile    *string
	json      *bool
	timeout   *time.Duration
	args      []string // the positional arguments, after setup
}

func newAdminFlags(name string, stderr io.Writer) *adminFlags {
	fs := newFlagSet(name, stderr)
	return &adminFlags{
		fs:        fs,
		config:    configFlag(fs),
		addr:      fs.String("admin", "", "the admin endpoint's host:port (default: admin.address from -config)"),
		tokenFile: fs.String("token-file", "", "file holding the bearer token (default: admin.token_file from -config)"),
		caFile:    fs.String("ca-file", "", "PEM roots to verify the endpoint's certificate; implies https (default: admin.ca_file from -config, else the system roots)"),
		json:      fs.Bool("json", false, "print JSON for scripts instead of tables"),
		timeout:   fs.Duration("timeout", 10*time.Second, "how long to wait for the gateway"),
	}
}

// parse parses flags placed before, between or after the positional
// arguments ("bans add 192.0.2.7 -for 1h"), which package flag alone does not.
func (f *adminFlags) parse(args []string) ([]string, error) {
	var pos []string
	for {
		if err := f.fs.Parse(args); err != nil {
			return nil, err
		}
		args = f.fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos, args = append(pos, args[0]), args[1:]
	}
}

// client builds the admin client: flags win over the config file, which is
// read only when -admin is missing or -config is given explicitly.
func (f *adminFlags) client() (*admin.Client, error) {
	addr, tokenFile, caFile := *f.addr, *f.tokenFile, *f.caFile
	var cfg *conf.Config
	if addr == "" || f.isSet("config") {
		var err error
		if cfg, err = conf.Load(*f.config); err != nil {
			return nil, err
		}
		if addr == "" {
			addr = cfg.Admin.Address
		}
		if tokenFile == "" {
			tokenFile = cfg.Admin.TokenFile
		}
		if caFile == "" {
			caFile = cfg.Admin.CAFile
		}
		if addr == "" {
			return nil, fmt.Errorf("%s: admin.address is empty: the admin endpoint is off", *f.config)
		}
	}
	var token string
	if tokenFile != "" {
		var err error
		if token, err = admin.ReadTokenFile(tokenFile); err != nil {
			return nil, err
		}
	}
	var tlsConf *tls.Config
	if caFile != "" || strings.HasPrefix(addr, "https://") || (cfg != nil && cfg.Admin.TLS != conf.TLSNone) {
		name := ""
		if cfg != nil && !strings.Contains(addr, "://") {
			name = adminServerName(cfg)
		}
		var err error
		if tlsConf, err = admin.ClientTLS(caFile, name); err != nil {
			return nil, err
		}
	}
	return admin.NewClientTLS(addr, token, tlsConf)
}

// adminServerName is the name the CLI verifies the endpoint's certificate
// against when it dials admin.address: the first of admin.names, else with
// admin.tls = "gateway" server.hostname (the gateway's certificate always
// covers it), else "" for the address dialled (a name, or an IP address
// the certificate must list).
func adminServerName(cfg *conf.Config) string {
	switch {
	case len(cfg.Admin.Names) > 0:
		return cfg.Admin.Names[0]
	case cfg.Admin.TLS == conf.AdminTLSGateway:
		return cfg.Server.Hostname
	}
	return ""
}

func (f *adminFlags) isSet(name string) bool {
	set := false
	f.fs.Visit(func(fl *flag.Flag) { set = set || fl.Name == name })
	return set
}

func (f *adminFlags) context() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), *f.timeout)
}

func bansList(args []string, stdout, stderr io.Writer) int {
	f := newAdminFlags("bans list", stderr)
	c, code := f.setup(args, 0, stderr)
	if c == nil {
		return code
	}
	ctx, cancel := f.context()
	defer cancel()
	bans, err := c.Bans(ctx)
	if err != nil {
		return fail(stderr, "bans list", err)
	}
	if *f.json {
		return printJSON(stdout, stderr, bans)
	}
	printBans(stdout, bans, time.Now())
	return 0
}

func bansAdd(args []string, stdout, stderr io.Writer) int {
	f := newAdminFlags("bans add", stderr)
	d := f.fs.Duration("for", 0, "ban length (default: the gateway's bans.ban)")
	reason := f.fs.String("reason", "", `why, shown in ban lists (default "manual")`)
	c, code := f.setup(args, 1, stderr)
	if c == nil {
		return code
	}
	if *d < 0 {
		fmt.Fprintln(stderr, "imapgw bans add: -for must be positive")
		return 2
	}
	ctx, cancel := f.context()
	defer cancel()
	b, err := c.AddBan(ctx, f.args[0], *d, *reason)
	if err != nil {
		return fail(stderr, "bans add", err)
	}
	if *f.json {
		return printJSON(stdout, stderr, b)
	}
	fmt.Fprintf(stdout, "banned %s until %s (%s)\n", b.Prefix, fmtTime(b.Until), b.Reason)
	return 0
}

func bansDel(args []string, stdout, stderr io.Writer) int {
	f := newAdminFlags("bans del", stderr)
	c, code := f.setup(args, 1, stderr)
	if c == nil {
		return code
	}
	ip := f.args[0]
	ctx, cancel := f.context()
	defer cancel()
	if err := c.LiftBan(ctx, ip); err != nil {
		return fail(stderr, "bans del", err)
	}
	if *f.json {
		return printJSON(stdout, stderr, map[string]string{"status": "lifted", "ip": ip})
	}
	fmt.Fprintf(stdout, "lifted the ban covering %s\n", ip)
	return 0
}

// setup parses args, which must hold exactly npos positional arguments, and
// builds the client; on failure it returns nil and the exit code.
func (f *adminFlags) setup(args []string, npos int, stderr io.Writer) (*admin.Client, int) {
	pos, err := f.parse(args)
	if err != nil {
		return nil, 2
	}
	if len(pos) != npos {
		fmt.Fprintf(stderr, "%s: want %d argument(s), got %d (-h for help)\n", f.fs.Name(), npos, len(pos))
		return nil, 2
	}
	f.args = pos
	c, err := f.client()
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", f.fs.Name(), err)
		return nil, 1
	}
	return c, 0
}

// fail prints an error, with a hint for the answers people meet first.
func fail(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "imapgw %s: %v\n", cmd, err)
	var e *admin.APIError
	if !errors.As(err, &e) {
		return 1
	}
	switch e.Status {
	case http.StatusUnauthorized:
		fmt.Fprintln(stderr, "  (pass the token with -token-file, or -config with admin.token_file)")
	case http.StatusMisdirectedRequest:
		fmt.Fprintln(stderr, "  (call the endpoint by the address it listens on, or add the name to admin.names)")
	}
	return 1
}

func printJSON(stdout, stderr io.Writer, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintln(stderr, "imapgw:", err)
		return 1
	}
	return 0
}

func printBans(w io.Writer, bans []limiter.Ban, now time.Time) {
	if len(bans) == 0 {
		fmt.Fprintln(w, "no active bans")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PREFIX\tSOURCE\tREASON\tSTRIKES\tSINCE\tUNTIL\tLEFT")
	for _, b := range bans {
		src := b.Source
		if b.Node != "" { // [cluster]: the gateway that made it
			src += "@" + b.Node
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", b.Prefix, src, b.Reason, b.Strikes,
			fmtTime(b.Since), fmtTime(b.Until), fmtDuration(b.Until.Sub(now)))
	}
	tw.Flush()
}

// statusCmd prints the gateway's counters, certificates and sessions.
func statusCmd(args []string, stdout, stderr io.Writer) int {
	f := newAdminFlags("status", stderr)
	c, code := f.setup(args, 0, stderr)
	if c == nil {
		return code
	}
	ctx, cancel := f.context()
	defer cancel()
	st, err := c.Stats(ctx)
	if err != nil {
		return fail(stderr, "status", err)
	}
	sessions, err := c.Sessions(ctx)
	if err != nil {
		return fail(stderr, "status", err)
	}
	backends, err := c.Backends(ctx)
	if err != nil && !admin.IsStatus(err, http.StatusNotImplemented) {
		return fail(stderr, "status", err)
	}
	cl, err := c.Cluster(ctx)
	if err != nil && !admin.IsStatus(err, http.StatusNotFound) { // 404: a gateway from before issue 13
		return fail(stderr, "status", err)
	}
	if *f.json {
		return printJSON(stdout, stderr, struct {
			Stats    admin.Stats         `json:"stats"`
			Cluster  admin.ClusterInfo   `json:"cluster"`
			Backends []admin.BackendInfo `json:"backends"`
			Sessions []admin.SessionInfo `json:"sessions"`
		}{st, cl, backends, sessions})
	}
	printCounters(stdout, st)
	fmt.Fprintf(stdout, "cluster        %s\n", fmtCluster(cl))
	fmt.Fprintln(stdout)
	printStatus(stdout, st, backends, sessions, time.Now())
	return 0
}

func printStatus(w io.Writer, st admin.Stats, backends []admin.BackendInfo, sessions []admin.SessionInfo, now time.Time) {
	printCerts(w, st.Certificates)
	fmt.Fprintln(w)
	printBackends(w, backends, now)
	fmt.Fprintln(w)
	printSessions(w, sessions, now)
}

func printCounters(w io.Writer, st admin.Stats) {
	ready := "ready"
	if !st.Ready {
		ready = "NOT READY (no valid certificate)"
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "gateway\t%s, up %s\n", ready, fmtDuration(time.Duration(st.UptimeSeconds)*time.Second))
	fmt.Fprintf(tw, "sessions\t%s\n", fmtCounts(st.Sessions))
	fmt.Fprintf(tw, "logins\t%s\n", fmtCounts(st.Logins))
	fmt.Fprintf(tw, "connections\t%s\n", fmtCounts(st.Connections))
	fmt.Fprintf(tw, "bans\t%d active; made: %s\n", st.Bans.Active, fmtCounts(st.Bans.Total))
	fmt.Fprintf(tw, "relayed bytes\t%s\n", fmtCounts(st.RelayBytes))
	fmt.Fprintf(tw, "panics\t%d\n", st.Panics)
	tw.Flush()
}

func printCerts(w io.Writer, certs []admin.CertStats) {
	if len(certs) == 0 {
		fmt.Fprintln(w, "no certificate loaded")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CERTIFICATE\tSOURCE\tEXPIRES\tLEFT")
	for _, c := range certs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", strings.Join(c.Names, ","), c.Source, fmtTime(c.NotAfter),
			fmtDuration(time.Duration(c.ExpiresInSeconds)*time.Second))
	}
	tw.Flush()
}

func printSessions(w io.Writer, sessions []admin.SessionInfo, now time.Time) {
	if len(sessions) == 0 {
		fmt.Fprintln(w, "no sessions")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION\tCLIENT\tUSER\tBACKEND\tSTATE\tFOR\tIN\tOUT")
	for _, s := range sessions {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", s.ID, s.Client, orDash(s.User), orDash(s.Backend),
			s.State, fmtDuration(now.Sub(s.Since)), s.BytesIn, s.BytesOut)
	}
	tw.Flush()
}

// fmtCounts prints a labelled count map in a stable order: "ok 3  failed 1".
func fmtCounts(m map[string]uint64) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, "  ")
}

func fmtTime(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") }

// fmtDuration rounds to what a person reads: seconds, and days past two.
func fmtDuration(d time.Duration) string {
	if d < 0 {
		return "expired"
	}
	if d >= 48*time.Hour {
		days := d / (24 * time.Hour)
		return fmt.Sprintf("%dd%dh", days, (d-days*24*time.Hour)/time.Hour)
	}
	return d.Round(time.Second).String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
