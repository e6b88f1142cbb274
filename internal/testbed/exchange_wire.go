package testbed

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
)

// The Exchange testbed's own command reader. It is deliberately independent of
// the gateway's parser (proxy/imapwire), so a test that checks a login name
// arrived byte for byte does not share the gateway's mistakes. It is strict where
// RFC 9051 is: a backslash in a quoted string escapes only `\` or `"`.

// errSyntax is a command this reader cannot parse; Exchange answers such with
// "BAD Command Argument Error. 11".
var errSyntax = errors.New("syntax error")

// maxExLine bounds a command line and a literal (testbed).
const maxExLine = 64 << 10

// readCommand reads one command: tag, name and arguments, with literals read
// (answering "+ Ready for additional command text." to a synchronizing one) and
// quoted strings unescaped. Parentheses are returned as "(" and ")" arguments.
func (c *exConn) readCommand() ([][]byte, error) {
	var args [][]byte
	for {
		line, err := c.readLine()
		if err != nil {
			return args, err
		}
		rest, n, plus, lit := literalAtEnd(line)
		toks, err := tokens(rest)
		args = append(args, toks...)
		if err != nil {
			return args, err
		}
		if !lit {
			return args, nil
		}
		if n > maxExLine {
			return args, errSyntax
		}
		if !plus {
			if err := c.writeLine(exLiteralCont); err != nil {
				return args, err
			}
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(c.br, b); err != nil {
			return args, err
		}
		args = append(args, b)
	}
}

// readLine reads a line without its CRLF.
func (c *exConn) readLine() ([]byte, error) {
	var line []byte
	for {
		chunk, err := c.br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxExLine {
			return nil, errSyntax
		}
		switch {
		case err == nil:
			return bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r")), nil
		case !errors.Is(err, bufio.ErrBufferFull):
			return nil, err
		}
	}
}

// literalAtEnd splits "… {12}" or "… {12+}" off the end of a line.
func literalAtEnd(line []byte) (rest []byte, n int, plus, ok bool) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return line, 0, false, false
	}
	open := bytes.LastIndexByte(line, '{')
	if open < 0 {
		return line, 0, false, false
	}
	num := line[open+1 : len(line)-1]
	if plus = bytes.HasSuffix(num, []byte("+")); plus {
		num = num[:len(num)-1]
	}
	n, err := strconv.Atoi(string(num))
	if err != nil || n < 0 {
		return line, 0, false, false
	}
	return line[:open], n, plus, true
}

// tokens splits atoms, quoted strings and parentheses separated by spaces.
func tokens(s []byte) ([][]byte, error) {
	var out [][]byte
	for len(s) > 0 {
		switch s[0] {
		case ' ':
			s = s[1:]
		case '(', ')':
			out = append(out, s[:1])
			s = s[1:]
		case '"':
			q, rest, err := quoted(s[1:])
			if err != nil {
				return out, err
			}
			out = append(out, q)
			s = rest
		default:
			end := bytes.IndexAny(s, " ()")
			if end < 0 {
				end = len(s)
			}
			out = append(out, s[:end])
			s = s[end:]
		}
	}
	return out, nil
}

// quoted reads a quoted string's body after its opening quote.
func quoted(s []byte) (q, rest []byte, err error) {
	q = []byte{}
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			return q, s[i+1:], nil
		case '\\':
			if i+1 == len(s) || (s[i+1] != '\\' && s[i+1] != '"') {
				return nil, nil, errSyntax
			}
			i++
		}
		q = append(q, s[i])
	}
	return nil, nil, errSyntax
}
