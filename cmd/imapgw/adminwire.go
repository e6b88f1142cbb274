package main

import (
	"crypto/tls"

	"github.com/imapgw/imapgw/admin"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/proxy"
)

// startAdmin starts the admin endpoint of the running configuration; it
// returns nil, nil when admin.address is "". admin.* is read once: changing
// it takes a restart.
func (g *gateway) startAdmin() (*admin.Server, error) {
	if g.cfg.Admin.Address == "" {
		return nil, nil
	}
	s, err := g.newAdmin(g.cfg.Admin)
	if err != nil {
		return nil, err
	}
	if err := s.Start(); err != nil {
		return nil, err
	}
	return s, nil
}

// newAdmin wires the gateway's parts into an admin server for a.
func (g *gateway) newAdmin(a conf.Admin) (*admin.Server, error) {
	var token string
	if a.TokenFile != "" {
		var err error
		if token, err = admin.ReadTokenFile(a.TokenFile); err != nil {
			return nil, err
		}
	}
	tlsConf, err := g.adminTLS(a)
	if err != nil {
		return nil, err
	}
	return admin.New(admin.Options{
		Address:   a.Address,
		Token:     token,
		Names:     a.Names,
		TLS:       tlsConf,
		Gatherer:  g.reg,
		Bans:      g.lim,
		InKernel:  g.firewallInKernel(),
		Sessions:  admin.SessionsFunc(g.sessions),
		Listeners: g.listeners,
		Backends:  poolAdmin{g.pool},
		Cluster:   g.clusterInfo(),
		Certs:     g.certs.Certificates,
		Ready:     g.certs.Ready,
		Draining:  g.draining.Load,
		Reload:    g.reloadNotified,
		Logger:    g.log.With("part", "admin"),
	})
}

// adminTLS is the admin listener's TLS config for admin.tls: nil for "none";
// the IMAP listeners' certificates for "gateway" (ACME, files or
// self-signed, renewed and reloaded with them); admin.cert_file and
// admin.key_file for "files".
func (g *gateway) adminTLS(a conf.Admin) (*tls.Config, error) {
	switch a.TLS {
	case conf.AdminTLSGateway:
		c := g.certs.TLSConfig()
		c.NextProtos = nil // not "imap" or "acme-tls/1": net/http offers h2 and http/1.1
		return c, nil
	case conf.CertFiles:
		get, err := admin.FileCertificate(a.CertFile, a.KeyFile, g.log.With("part", "admin"))
		if err != nil {
			return nil, err
		}
		return &tls.Config{GetCertificate: get, MinVersion: g.certs.TLSConfig().MinVersion}, nil
	}
	return nil, nil
}

// sessions copies the data path's session list into admin's type: admin does
// not import proxy (DESIGN.md, dependencies point one way).
func (g *gateway) sessions() []admin.SessionInfo {
	list := g.srv.Sessions()
	out := make([]admin.SessionInfo, len(list))
	for i, s := range list {
		out[i] = adminSession(s)
	}
	return out
}

func adminSession(s proxy.SessionInfo) admin.SessionInfo {
	return admin.SessionInfo{
		ID: s.ID, Client: s.Client, Listener: s.Listener, User: s.User, Backend: s.Backend,
		State: s.State, Since: s.Since, BytesIn: s.BytesIn, BytesOut: s.BytesOut,
	}
}

// listeners describes the configured IMAP listeners and where each is bound,
// for the status page.
func (g *gateway) listeners() []admin.ListenerInfo {
	bound := map[string]string{}
	for _, b := range g.srv.Listeners() {
		bound[b.Address] = b.Bound
	}
	var out []admin.ListenerInfo
	for _, l := range g.srv.Config().Listen {
		out = append(out, admin.ListenerInfo{
			Address: l.Address, Bound: bound[l.Address], TLS: string(l.TLS), ProxyProtocol: l.ProxyProtocol,
		})
	}
	return out
}
