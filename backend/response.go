package backend

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
)

// The reply reader serves both the dialer (greeting, STARTTLS, CAPABILITY) and
// the proxy's login replay: one bounded reader for everything a backend says
// before the relay (issue 11.3).

// Bounds on what the gateway reads from the backend while it logs in. The
// backend is trusted to speak IMAP, not to be small or honest: with
// backend.tls = "none" anyone on the path can answer in its place, and every
// login in flight holds what it has read (issue 11.3).
const (
	// MaxReplyBytes bounds everything read in answer to one command (the
	// greeting, STARTTLS, CAPABILITY or the login), untagged responses and
	// literals included, and so the bytes one login keeps to forward. The
	// longest real answers are a CAPABILITY or ID response of well under
	// 1 KB; 64 KB leaves room for any server and keeps a thousand logins in
	// flight under 64 MB.
	MaxReplyBytes = 64 << 10
	// MaxReplyLines bounds the responses read in answer to one command. A
	// real server sends at most a handful of untagged responses (CAPABILITY,
	// ID, an ALERT) before its tagged reply; without a bound a backend could
	// keep a login reading blank or untagged lines until its deadline.
	MaxReplyLines = 64
)

var (
	ErrResponseTooLong  = fmt.Errorf("backend response too long (over %d bytes)", MaxReplyBytes)
	ErrTooManyResponses = fmt.Errorf("backend sent too many responses (over %d)", MaxReplyLines)
)

// ReplyReader reads the responses to one command, up to and including its
// tagged reply, within MaxReplyBytes and MaxReplyLines in all.
type ReplyReader struct {
	br    *bufio.Reader
	bytes int // bytes left
	lines int // responses left
}

// NewReplyReader reads the answer to one command from br.
func NewReplyReader(br *bufio.Reader) *ReplyReader {
	return &ReplyReader{br: br, bytes: MaxReplyBytes, lines: MaxReplyLines}
}

// Next reads one response, with any literals it carries inlined, without the
// final CRLF.
func (r *ReplyReader) Next() (string, error) {
	if r.lines <= 0 {
		return "", ErrTooManyResponses
	}
	r.lines--
	s, n, err := readResponse(r.br, r.bytes)
	r.bytes -= n
	return s, err
}

// readResponse reads one response line with its literals inlined, without the
// final CRLF, taking at most max bytes (CRLFs included) from br. It returns
// how many bytes it took. Sizes are compared as "n > room", never as a sum,
// so that no literal size can overflow the check.
func readResponse(br *bufio.Reader, max int) (string, int, error) {
	var sb strings.Builder
	read := 0
	for {
		start := sb.Len() // where the text after the last literal starts
		for {
			frag, err := br.ReadSlice('\n')
			read += len(frag)
			if read > max {
				return "", read, ErrResponseTooLong
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				sb.Write(frag)
				continue
			}
			if err != nil {
				return "", read, err
			}
			sb.Write(trimCRLF(frag))
			break
		}
		// The whole line since the last literal, not only its last fragment:
		// a "{n}" split across fragments is still a literal.
		n, err := literalSize(sb.String()[start:], max-read)
		if err != nil {
			return "", read, err
		}
		if n < 0 {
			return sb.String(), read, nil
		}
		sb.WriteString("\r\n")
		got, err := io.CopyN(&sb, br, int64(n))
		read += int(got)
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // the backend closed inside a literal
		}
		if err != nil {
			return "", read, err
		}
	}
}

func trimCRLF(b []byte) []byte {
	b = b[:len(b)-1]
	if n := len(b); n > 0 && b[n-1] == '\r' {
		b = b[:n-1]
	}
	return b
}

// literalSize finds RFC 9051's literal announcement, "{" number ["+"] "}", at
// the end of line and returns its size, or -1 when the line announces none.
// A size over room (at most MaxReplyBytes) is ErrResponseTooLong, found while
// parsing the digits so that no number of digits can overflow.
func literalSize(line string, room int) (int, error) {
	if !strings.HasSuffix(line, "}") {
		return -1, nil
	}
	i := strings.LastIndexByte(line, '{')
	if i < 0 {
		return -1, nil
	}
	digits := strings.TrimSuffix(line[i+1:len(line)-1], "+")
	if digits == "" {
		return -1, nil
	}
	n := 0
	for j := 0; j < len(digits); j++ {
		c := digits[j]
		if c < '0' || c > '9' {
			return -1, nil
		}
		// n <= room <= MaxReplyBytes before this step, so it cannot overflow.
		n = n*10 + int(c-'0')
		if n > room {
			return 0, ErrResponseTooLong
		}
	}
	return n, nil
}

// Reply is a parsed status response: "tag OK [CODE args] text".
type Reply struct {
	Tag  string // "*" for untagged, "+" for a continuation request
	Kind string // OK, NO, BAD, BYE, PREAUTH, or the untagged response name
	Code string // the response code's name, upper-cased, without brackets
	Args string // the response code's arguments
	Text string
}

// ParseReply parses a status response line (without its CRLF).
func ParseReply(line string) Reply {
	var st Reply
	st.Tag, line, _ = strings.Cut(line, " ")
	if st.Tag == "+" {
		st.Text = line
		return st
	}
	st.Kind, line, _ = strings.Cut(line, " ")
	st.Kind = strings.ToUpper(st.Kind)
	if strings.HasPrefix(line, "[") {
		if end := strings.IndexByte(line, ']'); end > 0 {
			code := line[1:end]
			st.Code, st.Args, _ = strings.Cut(code, " ")
			st.Code = strings.ToUpper(st.Code)
			line = strings.TrimPrefix(line[end+1:], " ")
		}
	}
	st.Text = line
	return st
}

func (st Reply) String() string {
	if st.Code != "" {
		return fmt.Sprintf("%s [%s] %s", st.Kind, st.Code, st.Text)
	}
	return st.Kind + " " + st.Text
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
