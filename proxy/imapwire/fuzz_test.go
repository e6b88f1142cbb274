package imapwire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
)

// Small limits so the fuzzer reaches them.
const (
	fuzzMaxLine    = 256
	fuzzMaxLiteral = 64
)

// fuzzSeeds: RFC 9051 and RFC 7888 examples, what real clients send before
// login, and the malformed inputs of the table tests.
var fuzzSeeds = []string{
	"abcd CAPABILITY\r\n",
	"a002 NOOP\r\n",
	"A023 LOGOUT\r\n",
	"a001 STARTTLS\r\n",
	"a001 login SMITH SESAME\r\n",
	"A001 LOGIN {11}\r\nFRED FOOBAR {7}\r\nfat man\r\n",
	"A001 LOGIN {11+}\r\nFRED FOOBAR {7+}\r\nfat man\r\n",
	"A001 AUTHENTICATE GSSAPI\r\nYIIB+wYJKoZIhvcSAQICAQBuggHqMIIB5qADAgEFoQMCAQ6iBw==\r\n",
	"A001 AUTHENTICATE PLAIN\r\nAGZyZWQAdGlnZXI=\r\n",
	"A001 AUTHENTICATE PLAIN AGZyZWQAdGlnZXI=\r\n",
	"A001 AUTHENTICATE PLAIN =\r\n",
	"A001 AUTHENTICATE PLAIN\r\n*\r\n",
	"a023 ID (\"name\" \"sodr\" \"version\" \"19.34\" \"vendor\" \"Pink Floyd Music Limited\")\r\n",
	"1 ID (\"name\" \"Thunderbird\" \"version\" \"115.0\")\r\n2 CAPABILITY\r\n",
	"a1 ID NIL\r\n",
	"A142 SELECT INBOX\r\n",
	"A682 LIST \"\" *\r\n",
	"a1 LOGIN \"alice\" \"pa\\\"ss\\\\word\"\r\n",
	"a1 LOGIN alice p\xc3\xa4ss]w\xe2\x82\xacrd\r\n",
	"a1 LOGIN {5}\nalice {0}\n\n",
	"a1 X {1+}\r\na {1+}\r\nb {1+}\r\nc {1+}\r\nd {1+}\r\ne\r\n",
	"a1 ID ((((x))))\r\na2 ID (((((x)))))\r\n",
	"a1 ID ({4+}\r\nname {3}\r\nfoo)\r\n",
	"* NOOP\r\n+ NOOP\r\na+1 NOOP\r\na1\r\na2 \r\na3 NOOP \r\n",
	"a1 LOGIN \"a\\b\" x\r\na2 LOGIN \"abc\r\na3 LOGIN \"a\x00\" x\r\na4 LOGIN \"a\rb\" x\r\n",
	"a1 LOGIN {5} x\r\na2 LOGIN {abc}\r\na3 LOGIN {}\r\na4 LOGIN {+5}\r\n",
	"a1 LOGIN {65}\r\n",
	"a1 LOGIN {99999999999999999999+}\r\n",
	"a1 LOGIN {5}\r\nali",
	"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
	"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
}

func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte("a1 LOGIN " + strings.Repeat("x", fuzzMaxLine) + "\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		parseAll(t, in)
	})
}

// countingReader counts the bytes the parser's bufio.Reader took from the input.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += n
	return n, err
}

// parseAll reads commands from in until a session-ending error, as the session
// does, and checks the invariants on everything the parser returns.
func parseAll(t *testing.T, in []byte) {
	src := &countingReader{r: bytes.NewReader(in)}
	br := bufio.NewReaderSize(src, 16) // smaller than a line: lines arrive in fragments
	r := NewReader(br, fuzzMaxLine, fuzzMaxLiteral)
	conts := 0
	r.Continue = func(n int64) error {
		if n < 0 || n > fuzzMaxLiteral {
			t.Fatalf("Continue(%d), want 0 <= n <= %d", n, fuzzMaxLiteral)
		}
		conts++
		return nil
	}
	consumed := 0
	// Every command that does not end the session consumes at least its LF.
	for i := 0; ; i++ {
		if i > len(in) {
			t.Fatalf("%d commands from %d bytes: the reader makes no progress", i, len(in))
		}
		conts = 0
		cmd, err := r.ReadCommand()
		if conts > maxLiterals {
			t.Errorf("ReadCommand() called Continue %d times, want at most %d", conts, maxLiterals)
		}
		consumed = checkConsumed(t, src.n-br.Buffered(), consumed, len(in))
		if err == nil {
			checkCommand(t, cmd)
			checkReparse(t, cmd)
			readSASLResponse(t, r, cmd)
			consumed = checkConsumed(t, src.n-br.Buffered(), consumed, len(in))
			continue
		}
		var se *SyntaxError
		if errors.As(err, &se) {
			checkSyntaxError(t, se)
			continue
		}
		if (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) && consumed != len(in) {
			t.Errorf("ReadCommand() = %v after consuming %d of %d bytes", err, consumed, len(in))
		}
		return
	}
}

// readSASLResponse reads one client response after an AUTHENTICATE without an
// initial response, interleaving ReadLine with ReadCommand as the session does.
func readSASLResponse(t *testing.T, r *Reader, cmd *Command) {
	if cmd.Name != "AUTHENTICATE" || len(cmd.Args) != 1 {
		return
	}
	line, err := r.ReadLine()
	if err == nil && (len(line) > fuzzMaxLine || bytes.IndexByte(line, '\n') >= 0) {
		t.Errorf("ReadLine() = %q, want at most %d bytes and no LF", line, fuzzMaxLine)
	}
}

func checkConsumed(t *testing.T, now, before, total int) int {
	t.Helper()
	if now < before || now > total {
		t.Fatalf("consumed %d bytes after %d, of %d in all", now, before, total)
	}
	return now
}

func checkCommand(t *testing.T, cmd *Command) {
	t.Helper()
	if cmd == nil {
		t.Fatal("ReadCommand() = nil, nil")
	}
	if !validTag(cmd.Tag) {
		t.Errorf("ReadCommand() tag = %q, want 1*<ASTRING-CHAR except +>", cmd.Tag)
	}
	if !validName(cmd.Name) {
		t.Errorf("ReadCommand() name = %q, want upper-case letters and digits", cmd.Name)
	}
	lits := 0
	for _, v := range cmd.Args {
		checkValue(t, v, 0, &lits)
	}
	if lits > maxLiterals {
		t.Errorf("ReadCommand() returned %d literals, want at most %d", lits, maxLiterals)
	}
}

func checkSyntaxError(t *testing.T, se *SyntaxError) {
	t.Helper()
	if se.Tag != "" && !validTag(se.Tag) {
		t.Errorf("SyntaxError.Tag = %q, want a valid tag or none", se.Tag)
	}
	if se.Msg == "" {
		t.Error("SyntaxError.Msg is empty")
	}
}

func checkValue(t *testing.T, v Value, depth int, lits *int) {
	t.Helper()
	switch v.Kind {
	case Atom:
		if len(v.Bytes) == 0 || !allAtomChars(v.Bytes) {
			t.Errorf("atom %q: want 1*ATOM-CHAR", v.Bytes)
		}
	case Quoted:
		if bytes.ContainsAny(v.Bytes, "\x00\r\n") {
			t.Errorf("quoted string %q holds NUL, CR or LF", v.Bytes)
		}
	case Literal:
		*lits++
		if len(v.Bytes) > fuzzMaxLiteral {
			t.Errorf("literal of %d bytes, want at most %d", len(v.Bytes), fuzzMaxLiteral)
		}
	case List:
		if depth >= maxDepth {
			t.Errorf("list at depth %d, want below %d", depth, maxDepth)
		}
		for _, e := range v.List {
			checkValue(t, e, depth+1, lits)
		}
	default:
		t.Errorf("value of kind %d", v.Kind)
	}
}

// checkReparse encodes cmd the way a client could have sent it and parses it
// again: the parser must read back exactly what it gave.
func checkReparse(t *testing.T, cmd *Command) {
	t.Helper()
	var b bytes.Buffer
	b.WriteString(cmd.Tag + " " + cmd.Name)
	for _, v := range cmd.Args {
		b.WriteByte(' ')
		encodeValue(&b, v)
	}
	b.WriteString("\r\n")
	enc := b.String()
	r := NewReader(bufio.NewReader(strings.NewReader(enc)), 1<<16, fuzzMaxLiteral)
	got, err := r.ReadCommand()
	if err != nil || render(got) != render(cmd) {
		t.Errorf("ReadCommand(%q) = %s, %v, want %s", enc, render(got), err, render(cmd))
	}
}

// encodeValue writes v in canonical form; literals as LITERAL+.
func encodeValue(b *bytes.Buffer, v Value) {
	switch v.Kind {
	case Atom:
		b.Write(v.Bytes)
	case Quoted:
		b.WriteByte('"')
		for _, c := range v.Bytes {
			if c == '"' || c == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(c)
		}
		b.WriteByte('"')
	case Literal:
		b.WriteString("{" + strconv.Itoa(len(v.Bytes)) + "+}\r\n")
		b.Write(v.Bytes)
	case List:
		b.WriteByte('(')
		for i, e := range v.List {
			if i > 0 {
				b.WriteByte(' ')
			}
			encodeValue(b, e)
		}
		b.WriteByte(')')
	}
}

func allAtomChars(b []byte) bool {
	for _, c := range b {
		if !validAtomChar(c) {
			return false
		}
	}
	return true
}

// validAtomChar is RFC 9051's ATOM-CHAR widened as the package documents: ']'
// (ASTRING-CHAR), list-wildcards, 8-bit bytes, and '\\' (imaplib's unquoted
// Exchange shared-mailbox names, issue 10). Written out again here so the test
// does not check the parser against itself.
func validAtomChar(c byte) bool {
	return c > ' ' && c != 0x7f && !strings.ContainsRune(`(){"`, rune(c))
}

func validTag(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x80 || !validAtomChar(c) || strings.ContainsRune(`+%*\`, rune(c)) {
			return false
		}
	}
	return s != ""
}

func validName(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('A' <= c && c <= 'Z' || i > 0 && '0' <= c && c <= '9') {
			return false
		}
	}
	return s != ""
}
