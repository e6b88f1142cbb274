package proxy

import (
	"strings"

	"github.com/imapgw/imapgw/backend"
)

// Backend replies are read with backend.ReplyReader (bounded, issue 11.3);
// what they mean for a login is decided here.

// status is a backend's status response, parsed by the backend package.
type status = backend.Reply

var parseStatus = backend.ParseReply

// sanitize makes text from a peer safe to log or to repeat to the client: no
// control characters and a bounded length.
func sanitize(s string, max int) string {
	if len(s) > max {
		s = s[:max]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

var quoter = strings.NewReplacer(`\`, `\\`, `"`, `\"`)

// quoteIMAP returns s as an IMAP quoted string.
func quoteIMAP(s string) string { return `"` + quoter.Replace(s) + `"` }
