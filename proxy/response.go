package proxy

import (
	"fmt"
	"strings"
)

// Backend replies are read with backend.ReplyReader (bounded, issue 11.3);
// what they mean for a login is decided here.

// status is a parsed status response: "tag OK [CODE args] text".
type status struct {
	tag  string // "*" for untagged, "+" for a continuation request
	kind string // OK, NO, BAD, BYE, PREAUTH, or the untagged response name
	code string // the response code's name, upper-cased, without brackets
	args string // the response code's arguments
	text string
}

func parseStatus(line string) status {
	var st status
	st.tag, line, _ = strings.Cut(line, " ")
	if st.tag == "+" {
		st.text = line
		return st
	}
	st.kind, line, _ = strings.Cut(line, " ")
	st.kind = strings.ToUpper(st.kind)
	if strings.HasPrefix(line, "[") {
		if end := strings.IndexByte(line, ']'); end > 0 {
			code := line[1:end]
			st.code, st.args, _ = strings.Cut(code, " ")
			st.code = strings.ToUpper(st.code)
			line = strings.TrimPrefix(line[end+1:], " ")
		}
	}
	st.text = line
	return st
}

func (st status) String() string {
	if st.code != "" {
		return fmt.Sprintf("%s [%s] %s", st.kind, st.code, st.text)
	}
	return st.kind + " " + st.text
}

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
