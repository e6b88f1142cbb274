package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// maxResponse bounds one backend response line with its literals: the backend is
// trusted to speak IMAP, not to be small.
const maxResponse = 256 << 10

var errResponseTooLong = errors.New("backend response too long")

// readResponse reads one response line from the backend, with any literals it
// carries inlined, without the final CRLF.
func readResponse(br *bufio.Reader) (string, error) {
	var sb strings.Builder
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if sb.Len()+len(line) > maxResponse {
				return "", errResponseTooLong
			}
			sb.Write(line)
			continue
		}
		if err != nil {
			return "", err
		}
		line = trimCRLF(line)
		if sb.Len()+len(line) > maxResponse {
			return "", errResponseTooLong
		}
		sb.Write(line)
		n, ok := literalSuffix(line)
		if !ok {
			return sb.String(), nil
		}
		if sb.Len()+n > maxResponse {
			return "", errResponseTooLong
		}
		sb.WriteString("\r\n")
		if _, err := io.CopyN(&sb, br, int64(n)); err != nil {
			return "", err
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

// literalSuffix finds "{n}" at the end of a line.
func literalSuffix(line []byte) (int, bool) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false
	}
	i := strings.LastIndexByte(string(line), '{')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSuffix(string(line[i+1:len(line)-1]), "+"))
	return n, err == nil && n >= 0
}

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
