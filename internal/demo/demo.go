// Package demo is an in-memory IMAP backend (go-imap v2's imapmemserver) with a
// demo user and a few messages in INBOX. It serves `imapgw demo` and the fast
// gateway tests; it is not a mail store for production.
package demo

import (
	"bytes"
	"fmt"
	"log"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// Backend is a running in-memory IMAP server on a plain TCP listener.
type Backend struct {
	Addr string
	mem  *imapmemserver.Server
	srv  *imapserver.Server
	ln   net.Listener
}

// Messages is how many messages a new user's INBOX holds.
const Messages = 3

// Start serves an in-memory backend on addr ("127.0.0.1:0" picks a port) with
// the given users (name → password), each with Messages messages in INBOX.
func Start(addr string, users map[string]string) (*Backend, error) {
	return StartWithCaps(addr, users, Caps{SASLIR: true, LiteralPlus: true})
}

// Caps chooses optional capabilities, so tests can reach each way the gateway
// replays a login.
type Caps struct {
	SASLIR      bool // AUTHENTICATE with an initial response
	LiteralPlus bool // non-synchronizing literals
}

// StartWithCaps is Start with a choice of capabilities.
func StartWithCaps(addr string, users map[string]string, c Caps) (*Backend, error) {
	caps := imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}, imap.CapIdle: {}}
	if c.SASLIR {
		caps[imap.CapSASLIR] = struct{}{}
	}
	if c.LiteralPlus {
		caps[imap.CapLiteralPlus] = struct{}{}
	}
	mem := imapmemserver.New()
	for name, pass := range users {
		u := imapmemserver.NewUser(name, pass)
		if err := fill(u, name); err != nil {
			return nil, err
		}
		mem.AddUser(u)
	}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         caps,
		InsecureAuth: true, // the gateway terminates TLS; this hop is loopback
		Logger:       log.New(discard{}, "", 0),
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("demo backend: %w", err)
	}
	b := &Backend{Addr: ln.Addr().String(), mem: mem, srv: srv, ln: ln}
	go srv.Serve(ln)
	return b, nil
}

// AddUser adds a user with a filled INBOX.
func (b *Backend) AddUser(name, pass string) error {
	u := imapmemserver.NewUser(name, pass)
	if err := fill(u, name); err != nil {
		return err
	}
	b.mem.AddUser(u)
	return nil
}

// Close stops the backend and its connections.
func (b *Backend) Close() error { return b.srv.Close() }

func fill(u *imapmemserver.User, name string) error {
	// Sub-folders, so that `curl imaps://…/INBOX` (which sends LIST "INBOX" *)
	// shows the mailbox's structure rather than nothing.
	for _, mbox := range []string{"INBOX", "INBOX/Archive", "INBOX/Receipts"} {
		if err := u.Create(mbox, nil); err != nil {
			return err
		}
	}
	subjects := []string{"Welcome to imapgw", "Your gateway is working", "Try IDLE next"}
	for i := 0; i < Messages; i++ {
		msg := message(name, subjects[i%len(subjects)], i)
		if _, err := u.Append("INBOX", literal{bytes.NewReader(msg), int64(len(msg))}, &imap.AppendOptions{Time: time.Now()}); err != nil {
			return err
		}
	}
	return nil
}

func message(to, subject string, i int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: imapgw <demo@localhost>\r\nTo: %s@localhost\r\nSubject: %s\r\n", to, subject)
	fmt.Fprintf(&b, "Date: %s\r\nMessage-ID: <demo-%d@localhost>\r\n\r\n", time.Now().Format(time.RFC1123Z), i)
	fmt.Fprintf(&b, "Message %d of the demo mailbox.\r\n", i+1)
	return []byte(b.String())
}

type literal struct {
	*bytes.Reader
	n int64
}

func (l literal) Size() int64 { return l.n }

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
