package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/demo"
)

// demoCmd runs the gateway in front of an in-memory backend, on loopback, with a
// self-signed certificate: a way to see imapgw work in one command, no root.
func demoCmd(args []string, stdout, stderr io.Writer) int {
	return runDemo(args, stdout, stderr, nil)
}

// runDemo is demoCmd, stopped by a signal or by closing stop.
func runDemo(args []string, stdout, stderr io.Writer, stop <-chan struct{}) int {
	fs := newFlagSet("demo", stderr)
	implicit := fs.String("imaps", "127.0.0.1:9930", "implicit-TLS listener")
	starttls := fs.String("imap", "127.0.0.1:1430", "STARTTLS listener")
	adminAddr := fs.String("admin", "127.0.0.1:9993", `admin endpoint ("" disables)`)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	be, err := demo.Start("127.0.0.1:0", map[string]string{"demo": "demo"})
	if err != nil {
		fmt.Fprintln(stderr, "imapgw demo:", err)
		return 1
	}
	defer be.Close()
	state, err := os.MkdirTemp("", "imapgw-demo-")
	if err != nil {
		fmt.Fprintln(stderr, "imapgw demo:", err)
		return 1
	}
	defer os.RemoveAll(state)
	cfg := demoConfig(be.Addr, *implicit, *starttls, state)
	cfg.Admin.Address = *adminAddr
	sigs := notifySignals()
	defer signal.Stop(sigs)
	g, err := startGateway(cfg, "", stderr)
	if err != nil {
		fmt.Fprintln(stderr, "imapgw demo:", err)
		return 1
	}
	fmt.Fprintf(stdout, `imapgw demo: an in-memory mailbox (user demo, password demo) behind the gateway.

  implicit TLS  %[1]s   curl -k imaps://%[1]s/INBOX -u demo:demo
  STARTTLS      %[2]s   curl -k --ssl-reqd imap://%[2]s/INBOX -u demo:demo
  admin         %[3]s   curl http://%[3]s/metrics

  read a message:   curl -k 'imaps://%[1]s/INBOX;UID=1' -u demo:demo
  search INBOX:     curl -k 'imaps://%[1]s/INBOX?ALL' -u demo:demo
  a real client:    python3 -c 'import imaplib,ssl; m=imaplib.IMAP4_SSL("127.0.0.1",%[4]s,ssl_context=ssl._create_unverified_context()); print(m.login("demo","demo"), m.select("INBOX"))'

The certificate is self-signed (hence -k). Ctrl-C stops.
`, *implicit, *starttls, cfg.Admin.Address, port(*implicit))
	return g.serveUntil(sigs, stop)
}

func demoConfig(backend, implicit, starttls, state string) *conf.Config {
	cfg := conf.Default()
	cfg.Server.Hostname = "localhost"
	cfg.Server.StateDir = state
	cfg.Server.DrainTimeout = conf.D(2 * time.Second)
	cfg.Listen = []conf.Listen{{Address: implicit, TLS: conf.TLSImplicit}, {Address: starttls, TLS: conf.TLSStartTLS}}
	cfg.TLS.Certificate = conf.CertSelfSigned
	cfg.TLS.Names = []string{"127.0.0.1"}
	cfg.Backend.Servers = []string{backend}
	cfg.Backend.ClientIP = conf.ClientIPNone // the in-memory backend has no ID command
	cfg.Admin.Address = "127.0.0.1:9993"
	return cfg
}

func port(addr string) string {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "993"
	}
	return p
}
