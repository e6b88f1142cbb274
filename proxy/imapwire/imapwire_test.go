package imapwire

import (
	"bufio"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Limits for the table tests; the limit tests pick their own.
const (
	testMaxLine    = 200
	testMaxLiteral = 100
)

// testReader reads in and records every Continue call.
type testReader struct {
	*Reader
	conts []int64
}

func newTestReader(in string, maxLine, maxLiteral int) *testReader {
	tr := &testReader{}
	tr.Reader = NewReader(bufio.NewReader(strings.NewReader(in)), maxLine, maxLiteral)
	tr.Continue = func(n int64) error {
		tr.conts = append(tr.conts, n)
		return nil
	}
	return tr
}

// render writes a command in a compact notation that tells the kinds apart:
// atoms bare-quoted a"..", quoted strings q"..", literals l"..", lists (..).
func render(c *Command) string {
	if c == nil {
		return "<nil>"
	}
	var b strings.Builder
	b.WriteString(c.Tag + " " + c.Name)
	for _, v := range c.Args {
		b.WriteByte(' ')
		renderValue(&b, v)
	}
	return b.String()
}

func renderValue(b *strings.Builder, v Value) {
	switch v.Kind {
	case Atom:
		b.WriteString("a" + strconv.Quote(string(v.Bytes)))
	case Quoted:
		b.WriteString("q" + strconv.Quote(string(v.Bytes)))
	case Literal:
		b.WriteString("l" + strconv.Quote(string(v.Bytes)))
	case List:
		b.WriteByte('(')
		for i, e := range v.List {
			if i > 0 {
				b.WriteByte(' ')
			}
			renderValue(b, e)
		}
		b.WriteByte(')')
	default:
		b.WriteString("kind" + strconv.Itoa(int(v.Kind)))
	}
}

func TestReadCommand(t *testing.T) {
	tests := []struct {
		in    string
		want  string
		conts []int64 // Continue calls, in order
	}{
		// Tags: RFC 9051 tag = 1*<any ASTRING-CHAR except "+">.
		{in: "a1 CAPABILITY\r\n", want: "a1 CAPABILITY"},
		{in: "1 CAPABILITY\r\n", want: "1 CAPABILITY"}, // Thunderbird numbers its tags
		{in: "A0001 NOOP\r\n", want: "A0001 NOOP"},
		{in: "x.y.3 NOOP\r\n", want: "x.y.3 NOOP"},
		{in: "a] NOOP\r\n", want: "a] NOOP"}, // ']' is an ASTRING-CHAR
		{in: "a-b_c:d NOOP\r\n", want: "a-b_c:d NOOP"},

		// Command names are case-insensitive (RFC 9051 section 9, note 3).
		{in: "a1 login alice secret\r\n", want: `a1 LOGIN a"alice" a"secret"`},
		{in: "a1 Capability\r\n", want: "a1 CAPABILITY"},
		{in: "a1 NOOP\r\n", want: "a1 NOOP"},
		{in: "a1 LOGOUT\r\n", want: "a1 LOGOUT"},
		{in: "a1 STARTTLS\r\n", want: "a1 STARTTLS"},
		{in: "a1 NOOP\n", want: "a1 NOOP"}, // bare LF is accepted

		// ID (RFC 2971).
		{in: "a1 ID NIL\r\n", want: `a1 ID a"NIL"`},
		{
			in:   "a1 ID (\"name\" \"Thunderbird\" \"version\" \"115.0\")\r\n",
			want: `a1 ID (q"name" q"Thunderbird" q"version" q"115.0")`,
		},
		{in: "a1 ID ()\r\n", want: "a1 ID ()"},
		{in: "a1 ID (\"name\" NIL)\r\n", want: `a1 ID (q"name" a"NIL")`},
		{in: "a1 ID ((((x))))\r\n", want: `a1 ID ((((a"x"))))`}, // maxDepth levels

		// LOGIN with atoms (iOS Mail), quoted strings and escapes.
		{in: "a1 LOGIN alice secret\r\n", want: `a1 LOGIN a"alice" a"secret"`},
		{in: `a1 LOGIN "alice" "pa\"ss\\word"` + "\r\n", want: `a1 LOGIN q"alice" q"pa\"ss\\word"`},
		{in: `a1 LOGIN "" ""` + "\r\n", want: `a1 LOGIN q"" q""`},
		{in: "a1 LOGIN \"alice\" \"p\xc3\xa4ss \xe2\x82\xac\"\r\n", want: `a1 LOGIN q"alice" q"päss €"`},
		{in: "a1 LOGIN \xc3\xa5lice p\xe4ss\r\n", want: `a1 LOGIN a"ålice" a"p\xe4ss"`}, // 8-bit atoms
		{in: "a1 LOGIN alice]x se]cret\r\n", want: `a1 LOGIN a"alice]x" a"se]cret"`},
		{in: "a1 LOGIN alice pass}word\r\n", want: `a1 LOGIN a"alice" a"pass}word"`},
		// imaplib's unquoted user: an Exchange shared mailbox (issue 10 point 6).
		{in: `a1 LOGIN alice@dom\shared@dom "pw"` + "\r\n", want: `a1 LOGIN a"alice@dom\\shared@dom" q"pw"`},
		{in: "a1 LOGIN \"tab\there\" x\r\n", want: `a1 LOGIN q"tab\there" a"x"`}, // TEXT-CHAR includes HTAB

		// Synchronizing literals: one continuation request each.
		{
			in:    "a1 LOGIN {5}\r\nalice {6}\r\nsecret\r\n",
			want:  `a1 LOGIN l"alice" l"secret"`,
			conts: []int64{5, 6},
		},
		{in: "a1 LOGIN alice {0}\r\n\r\n", want: `a1 LOGIN a"alice" l""`, conts: []int64{0}},
		{in: "a1 LOGIN {05}\r\nalice x\r\n", want: `a1 LOGIN l"alice" a"x"`, conts: []int64{5}}, // number = 1*DIGIT
		// A literal holds any bytes, CRLF and NUL included.
		{in: "a1 LOGIN alice {4}\r\na\r\n\x00\r\n", want: `a1 LOGIN a"alice" l"a\r\n\x00"`, conts: []int64{4}},
		{in: "a1 LOGIN alice {8}\r\np\xc3\xa4ss\xe2\x82\xac\r\n", want: `a1 LOGIN a"alice" l"päss€"`, conts: []int64{8}},
		{in: "a1 LOGIN {5}\nalice {6}\nsecret\n", want: `a1 LOGIN l"alice" l"secret"`, conts: []int64{5, 6}},

		// LITERAL+ (RFC 7888): no continuation request.
		{in: "a1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n", want: `a1 LOGIN l"alice" l"secret"`},
		{in: "a1 LOGIN {5+}\r\nalice {6}\r\nsecret\r\n", want: `a1 LOGIN l"alice" l"secret"`, conts: []int64{6}},
		{in: "a1 LOGIN {5+}\r\nalice \"secret\"\r\n", want: `a1 LOGIN l"alice" q"secret"`},
		{in: "a1 ID ({4+}\r\nname {3+}\r\nfoo)\r\n", want: `a1 ID (l"name" l"foo")`},
		{in: "a1 X {1+}\r\na {1+}\r\nb {1+}\r\nc {1+}\r\nd\r\n", want: `a1 X l"a" l"b" l"c" l"d"`}, // maxLiterals

		// AUTHENTICATE (RFC 9051 section 6.2.2, SASL-IR RFC 4959).
		{in: "a1 AUTHENTICATE PLAIN\r\n", want: `a1 AUTHENTICATE a"PLAIN"`},
		{in: "a1 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n", want: `a1 AUTHENTICATE a"PLAIN" a"AGFsaWNlAHNlY3JldA=="`},
		{in: "a1 AUTHENTICATE PLAIN =\r\n", want: `a1 AUTHENTICATE a"PLAIN" a"="`},
		{in: "a1 authenticate login\r\n", want: `a1 AUTHENTICATE a"login"`},

		// Other forms the parser must not choke on before login.
		{in: "a1 LIST \"\" *\r\n", want: `a1 LIST q"" a"*"`},
		{in: "a1 SELECT INBOX\r\n", want: `a1 SELECT a"INBOX"`},
		{in: "a1 ENABLE UTF8=ACCEPT\r\n", want: `a1 ENABLE a"UTF8=ACCEPT"`},
	}
	for _, tt := range tests {
		r := newTestReader(tt.in, testMaxLine, testMaxLiteral)
		got, err := r.ReadCommand()
		if err != nil {
			t.Errorf("ReadCommand(%q) error = %v, want nil", tt.in, err)
			continue
		}
		if s := render(got); s != tt.want {
			t.Errorf("ReadCommand(%q) = %s, want %s", tt.in, s, tt.want)
		}
		if !slices.Equal(r.conts, tt.conts) {
			t.Errorf("ReadCommand(%q) Continue calls = %v, want %v", tt.in, r.conts, tt.conts)
		}
		if _, err := r.ReadCommand(); !errors.Is(err, io.EOF) {
			t.Errorf("ReadCommand(%q) then ReadCommand() error = %v, want io.EOF (input left over)", tt.in, err)
		}
	}
}

func TestReadCommandSyntaxError(t *testing.T) {
	tests := []struct {
		in      string
		wantTag string // the tag the BAD carries; "" for an untagged BYE
		wantMsg string
	}{
		{"\r\n", "", "missing tag"},
		{" NOOP\r\n", "", "missing tag"},
		{"* NOOP\r\n", "", "missing tag"},
		{"+ NOOP\r\n", "", "missing tag"},
		{"a+1 NOOP\r\n", "", "bad tag"}, // the tag is "a+1", not "a"
		{"a*1 NOOP\r\n", "", "bad tag"},
		{"a%1 NOOP\r\n", "", "bad tag"},
		{"\xc3\xa41 NOOP\r\n", "", "missing tag"}, // tags are 7-bit
		{"a\"1 NOOP\r\n", "", "bad tag"},
		{"a1\tNOOP\r\n", "", "bad tag"},
		{"GET / HTTP/1.1\r\n", "GET", "missing command"},
		{"a1\r\n", "a1", "missing command"},
		{"a1 \r\n", "a1", "missing command"},
		{"a1  NOOP\r\n", "a1", "missing command"},
		{"a1 1NOOP\r\n", "a1", "missing command"},
		{"a1 NO-OP\r\n", "a1", "bad command name"},
		{"a1 NOOP\r\r\n", "a1", "bad command name"},
		{"a1 NOOP \r\n", "a1", "missing argument"},
		{"a1 LOGIN alice  secret\r\n", "a1", "unexpected character 0x20"},
		{"a1 LOGIN alice\x01 secret\r\n", "a1", "expected space"},
		{"a1 LOGIN \x7f secret\r\n", "a1", "unexpected character 0x7f"},
		{"a1 LOGIN ) secret\r\n", "a1", "unexpected character 0x29"},
		{`a1 LOGIN "alice""secret"` + "\r\n", "a1", "expected space"},

		// Quoted strings.
		{`a1 LOGIN "a\b" x` + "\r\n", "a1", "bad escape in quoted string"},
		{`a1 LOGIN "a\` + "\r\n", "a1", "bad escape in quoted string"},
		{`a1 LOGIN "alice secret` + "\r\n", "a1", "unterminated quoted string"},
		{"a1 LOGIN \"a\x00b\" x\r\n", "a1", "NUL in quoted string"},
		{"a1 LOGIN \"a\rb\" x\r\n", "a1", "CR in quoted string"}, // TEXT-CHAR excludes CR

		// Literal syntax.
		{"a1 LOGIN {5} x\r\n", "a1", "literal must end the line"},
		{"a1 LOGIN {5}x\r\n", "a1", "literal must end the line"},
		{"a1 LOGIN {abc}\r\n", "a1", "bad literal size"},
		{"a1 LOGIN {}\r\n", "a1", "bad literal size"},
		{"a1 LOGIN {+}\r\n", "a1", "bad literal size"},
		{"a1 LOGIN {+5}\r\n", "a1", "bad literal size"},
		{"a1 LOGIN {5++}\r\n", "a1", "bad literal size"},
		{"a1 LOGIN {-5}\r\n", "a1", "bad literal size"},
		{"a1 LOGIN { 5}\r\n", "a1", "bad literal size"},
		{"a1 LOGIN {1_0}\r\n", "a1", "bad literal size"},
		{"a1 LOGIN {0x5}\r\n", "a1", "bad literal size"},
		{"a1 LOGIN {5\r\n", "a1", "literal must end the line"},
		{"a1 LOGIN {\r\n", "a1", "literal must end the line"},

		// Lists.
		{"a1 ID (\r\n", "a1", "unterminated list"},
		{`a1 ID ("name" "x"` + "\r\n", "a1", "unterminated list"},
		{`a1 ID ("name"  "x")` + "\r\n", "a1", "unexpected character 0x20"},
		{`a1 ID ("name" )` + "\r\n", "a1", "unexpected character 0x29"},
		{`a1 ID ( "name")` + "\r\n", "a1", "unexpected character 0x20"},
		{`a1 ID ("name""x")` + "\r\n", "a1", "expected space"},
		{"a1 ID (((((x)))))\r\n", "a1", "lists nested too deep"},
		{"a1 ID " + strings.Repeat("(", 60) + "\r\n", "a1", "lists nested too deep"},
		{"a1 ID ()()\r\n", "a1", "expected space"},
	}
	for _, tt := range tests {
		r := newTestReader(tt.in, testMaxLine, testMaxLiteral)
		got, err := r.ReadCommand()
		var se *SyntaxError
		if !errors.As(err, &se) {
			t.Errorf("ReadCommand(%q) = %s, %v, want *SyntaxError", tt.in, render(got), err)
			continue
		}
		if se.Tag != tt.wantTag || se.Msg != tt.wantMsg || se.Error() != tt.wantMsg {
			t.Errorf("ReadCommand(%q) error = {Tag:%q Msg:%q}, want {Tag:%q Msg:%q}", tt.in, se.Tag, se.Msg, tt.wantTag, tt.wantMsg)
		}
		if len(r.conts) != 0 {
			t.Errorf("ReadCommand(%q) Continue calls = %v, want none", tt.in, r.conts)
		}
	}
}

// TestReadCommandTooManyLiterals: the fifth literal is refused before the
// client is invited to send it.
func TestReadCommandTooManyLiterals(t *testing.T) {
	in := "a1 X {1}\r\na {1}\r\nb {1}\r\nc {1}\r\nd {1}\r\n"
	r := newTestReader(in, testMaxLine, testMaxLiteral)
	_, err := r.ReadCommand()
	var se *SyntaxError
	if !errors.As(err, &se) || se.Tag != "a1" || se.Msg != "too many literals" {
		t.Errorf("ReadCommand(%q) error = %v, want SyntaxError a1 too many literals", in, err)
	}
	if want := []int64{1, 1, 1, 1}; !slices.Equal(r.conts, want) {
		t.Errorf("ReadCommand(%q) Continue calls = %v, want %v", in, r.conts, want)
	}
}

// TestReadCommandSkipsLiterals: after a SyntaxError, the non-synchronizing
// literals the client already sent with the malformed command are discarded,
// not read as commands (CRLF injection, ruby/net-imap#701).
func TestReadCommandSkipsLiterals(t *testing.T) {
	tests := []struct {
		in   string
		want string // the first SyntaxError, then what the next read returns
	}{
		{"a1 LOGIN \"a\\q\" {5+}\r\nalice\r\na2 NOOP\r\n", "a1 bad escape in quoted string; a2 NOOP"},
		{"a1 LOGIN \"a\\q\" {18+}\r\nb2 LOGIN evil pw\r\n\r\na2 NOOP\r\n", "a1 bad escape in quoted string; a2 NOOP"},
		{"a1 LOGIN \"a\rb\" {5+}\r\nalice {3+}\r\nabc\r\na2 NOOP\r\n", "a1 CR in quoted string; a2 NOOP"},
		{"a1 LOGIN {5+}\r\nalice \"x\\\" {3+}\r\nabc\r\na2 NOOP\r\n", "a1 unterminated quoted string; a2 NOOP"},
		{"a1 LOGIN ) {1+}\r\nx\r\na2 NOOP\r\n", "a1 unexpected character 0x29; a2 NOOP"},
		{"a1 {5+}\r\nalice\r\na2 NOOP\r\n", "a1 missing command; a2 NOOP"},
		{"* LOGIN {5+}\r\nalice\r\na2 NOOP\r\n", " missing tag; a2 NOOP"},
		{"a1 LOGIN x{5+}\r\nalice\r\na2 NOOP\r\n", "a1 expected space; a2 NOOP"},
		// A synchronizing literal is never sent: the client waits for "+".
		{"a1 LOGIN \"a\\q\" {5}\r\na2 NOOP\r\n", "a1 bad escape in quoted string; a2 NOOP"},
		// Not literals: "{+}" and "{a+}" end no valid literal.
		{"a1 LOGIN \"a\\q\" {+}\r\na2 NOOP\r\n", "a1 bad escape in quoted string; a2 NOOP"},
		{"a1 LOGIN \"a\\q\" {a+}\r\na2 NOOP\r\n", "a1 bad escape in quoted string; a2 NOOP"},
	}
	for _, tt := range tests {
		r := newTestReader(tt.in, testMaxLine, testMaxLiteral)
		_, err := r.ReadCommand()
		var se *SyntaxError
		if !errors.As(err, &se) {
			t.Errorf("ReadCommand(%q) error = %v, want *SyntaxError", tt.in, err)
			continue
		}
		next, err := r.ReadCommand()
		if got := se.Tag + " " + se.Msg + "; " + render(next); err != nil || got != tt.want {
			t.Errorf("ReadCommand(%q) twice = %s, %v, want %s", tt.in, got, err, tt.want)
		}
		if len(r.conts) != 0 {
			t.Errorf("ReadCommand(%q) Continue calls = %v, want none", tt.in, r.conts)
		}
	}
}

// TestReadCommandSkipLimits: literals that cannot be skipped within the
// limits end the session.
func TestReadCommandSkipLimits(t *testing.T) {
	tests := []struct {
		in   string
		want error
	}{
		{"a1 LOGIN \"a\\q\" {101+}\r\n", ErrLiteralTooLarge},
		{"a1 LOGIN \"a\\q\" {99999999999+}\r\n", ErrLiteralTooLarge},
		{"a1 X {1+}\r\na {1+}\r\nb {1+}\r\nc {1+}\r\nd {1+}\r\ne\r\n", ErrLiteralTooLarge}, // the fifth
		{"a1 X ) {1+}\r\na {1+}\r\nb {1+}\r\nc {1+}\r\nd {1+}\r\ne\r\n", ErrLiteralTooLarge},
		{"a1 LOGIN \"a\\q\" {5+}\r\nali", io.ErrUnexpectedEOF},
		{"a1 LOGIN \"a\\q\" {5+}\r\nalice", io.EOF},
		{"a1 LOGIN \"a\\q\" {5+}\r\nalice" + strings.Repeat("x", testMaxLine+1) + "\r\n", ErrLineTooLong},
	}
	for _, tt := range tests {
		r := newTestReader(tt.in, testMaxLine, testMaxLiteral)
		got, err := r.ReadCommand()
		var se *SyntaxError
		if !errors.Is(err, tt.want) || errors.As(err, &se) {
			t.Errorf("ReadCommand(%q) = %s, %v, want %v", tt.in, render(got), err, tt.want)
		}
	}
}

// TestReadCommandLimits: oversized input ends the session, before any
// continuation request invites more of it.
func TestReadCommandLimits(t *testing.T) {
	const maxLine, maxLit = 32, 16
	long := "a1 LOGIN " + strings.Repeat("x", maxLine) // over by len("a1 LOGIN ")
	tests := []struct {
		in      string
		want    error
		wantCon []int64
	}{
		{"a1 LOGIN {17}\r\n" + strings.Repeat("x", 17) + "\r\n", ErrLiteralTooLarge, nil},
		{"a1 LOGIN {17+}\r\n" + strings.Repeat("x", 17) + "\r\n", ErrLiteralTooLarge, nil},
		{"a1 LOGIN {4294967296}\r\n", ErrLiteralTooLarge, nil},
		{"a1 LOGIN {99999999999999999999}\r\n", ErrLiteralTooLarge, nil},  // overflows uint64
		{"a1 LOGIN {99999999999999999999+}\r\n", ErrLiteralTooLarge, nil}, // and is non-synchronizing
		{"a1 LOGIN {1}\r\nx {17}\r\n", ErrLiteralTooLarge, []int64{1}},    // the second one
		{long + "\r\n", ErrLineTooLong, nil},
		{long + "\n", ErrLineTooLong, nil},
		{strings.Repeat("x", 5000) + "\r\n", ErrLineTooLong, nil},           // longer than bufio's buffer
		{"a1 LOGIN {3}\r\nabc" + long + "\r\n", ErrLineTooLong, []int64{3}}, // the segment after a literal
		{strings.Repeat("a", maxLine+1) + "\n", ErrLineTooLong, nil},        // maxLine+2 bytes with a bare LF
	}
	for _, tt := range tests {
		r := newTestReader(tt.in, maxLine, maxLit)
		got, err := r.ReadCommand()
		if !errors.Is(err, tt.want) {
			t.Errorf("ReadCommand(%q) = %s, %v, want %v", tt.in, render(got), err, tt.want)
		}
		var se *SyntaxError
		if errors.As(err, &se) {
			t.Errorf("ReadCommand(%q) error %v is a SyntaxError, want a session-ending error", tt.in, err)
		}
		if !slices.Equal(r.conts, tt.wantCon) {
			t.Errorf("ReadCommand(%q) Continue calls = %v, want %v", tt.in, r.conts, tt.wantCon)
		}
	}
}

// TestReadCommandAtLimits: input exactly at the limits is accepted.
func TestReadCommandAtLimits(t *testing.T) {
	const maxLine, maxLit = 32, 16
	line := "a1 LOGIN " + strings.Repeat("x", maxLine-len("a1 LOGIN "))
	lit := strings.Repeat("y", maxLit)
	for _, in := range []string{
		line + "\r\n",
		line + "\n",
		"a1 LOGIN {16}\r\n" + lit + "\r\n",
		"a1 LOGIN {16+}\r\n" + lit + "\r\n",
	} {
		r := newTestReader(in, maxLine, maxLit)
		if got, err := r.ReadCommand(); err != nil {
			t.Errorf("ReadCommand(%q) = %s, %v, want no error", in, render(got), err)
		}
	}
}

// TestReadCommandIOError: a stream that ends or fails mid-command is an I/O
// error (the session ends quietly), not a SyntaxError answered with BAD.
func TestReadCommandIOError(t *testing.T) {
	tests := []struct {
		in   string
		want error
	}{
		{"", io.EOF},
		{"a1 NOOP", io.ErrUnexpectedEOF},
		{"a1 LOGIN {5}\r\n", io.EOF},
		{"a1 LOGIN {5}\r\nali", io.ErrUnexpectedEOF},
		{"a1 LOGIN {5+}\r\nali", io.ErrUnexpectedEOF},
		{"a1 LOGIN {5}\r\nalice", io.EOF}, // the line after the literal never comes
		{"a1 LOGIN {5}\r\nalice secret", io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		r := newTestReader(tt.in, testMaxLine, testMaxLiteral)
		got, err := r.ReadCommand()
		var se *SyntaxError
		if !errors.Is(err, tt.want) || errors.As(err, &se) || err.Error() != tt.want.Error() {
			t.Errorf("ReadCommand(%q) = %s, %v, want %v", tt.in, render(got), err, tt.want)
		}
	}
}

// TestReadCommandContinueError: a failed continuation request (the client
// went away) is returned as is and nothing more is read.
func TestReadCommandContinueError(t *testing.T) {
	errWrite := errors.New("write: broken pipe")
	in := "a1 LOGIN {5}\r\nalice x\r\n"
	r := NewReader(bufio.NewReader(strings.NewReader(in)), testMaxLine, testMaxLiteral)
	r.Continue = func(int64) error { return errWrite }
	got, err := r.ReadCommand()
	var se *SyntaxError
	if !errors.Is(err, errWrite) || errors.As(err, &se) {
		t.Errorf("ReadCommand(%q) = %s, %v, want %v", in, render(got), err, errWrite)
	}
	if n := r.Buffered(); n != len("alice x\r\n") {
		t.Errorf("ReadCommand(%q) left %d bytes buffered, want %d", in, n, len("alice x\r\n"))
	}
}

// TestReadCommandNoContinue: without a Continue func a synchronizing literal
// is still read.
func TestReadCommandNoContinue(t *testing.T) {
	in := "a1 LOGIN {5}\r\nalice x\r\n"
	r := NewReader(bufio.NewReader(strings.NewReader(in)), testMaxLine, testMaxLiteral)
	got, err := r.ReadCommand()
	if want := `a1 LOGIN l"alice" a"x"`; err != nil || render(got) != want {
		t.Errorf("ReadCommand(%q) = %s, %v, want %s", in, render(got), err, want)
	}
}

// TestReadCommandStream reads pipelined commands, some malformed: a
// SyntaxError inside one line leaves the reader at the start of the next
// command.
func TestReadCommandStream(t *testing.T) {
	in := "a1 CAPABILITY\r\n" +
		"a2 LOGIN \"bad\\q\" x\r\n" +
		"a3 ID (\"name\" \"x\"\r\n" +
		"* NOOP\r\n" +
		"a4 LOGIN {5}\r\nalice \"se\\\"cret\"\r\n" +
		"a5 LOGIN {5} x\r\n" +
		"a6 ID (((((x)))))\r\n" +
		"a7 LOGIN \"a\x00\" x\r\n" +
		"a8 NOOP\n" +
		"a9 LOGOUT\r\n"
	want := []string{
		"a1 CAPABILITY",
		"BAD a2 bad escape in quoted string",
		"BAD a3 unterminated list",
		"BAD  missing tag",
		`a4 LOGIN l"alice" q"se\"cret"`,
		"BAD a5 literal must end the line",
		"BAD a6 lists nested too deep",
		"BAD a7 NUL in quoted string",
		"a8 NOOP",
		"a9 LOGOUT",
	}
	r := newTestReader(in, testMaxLine, testMaxLiteral)
	var got []string
	for {
		cmd, err := r.ReadCommand()
		var se *SyntaxError
		switch {
		case err == nil:
			got = append(got, render(cmd))
			continue
		case errors.As(err, &se):
			got = append(got, "BAD "+se.Tag+" "+se.Msg)
			continue
		case !errors.Is(err, io.EOF):
			t.Fatalf("ReadCommand() error = %v after %q, want io.EOF at the end", err, got)
		}
		break
	}
	if !slices.Equal(got, want) {
		t.Errorf("ReadCommand() over %q =\n%q, want\n%q", in, got, want)
	}
	if want := []int64{5}; !slices.Equal(r.conts, want) {
		t.Errorf("ReadCommand() Continue calls = %v, want %v", r.conts, want)
	}
}

// TestReadCommandKeepsValues: the values of a command stay valid after the
// next command is read (atoms and quoted strings share their line's memory).
func TestReadCommandKeepsValues(t *testing.T) {
	in := "a1 LOGIN \"alice\" secret\r\na2 LOGIN \"bobby\" tiger1\r\n"
	r := newTestReader(in, testMaxLine, testMaxLiteral)
	first, err := r.ReadCommand()
	if err != nil {
		t.Fatalf("ReadCommand(%q) error = %v", in, err)
	}
	want := render(first)
	if _, err := r.ReadCommand(); err != nil {
		t.Fatalf("ReadCommand(%q) twice error = %v", in, err)
	}
	if got := render(first); got != want {
		t.Errorf("ReadCommand(%q) first command after the second = %s, want %s", in, got, want)
	}
}

// TestBuffered: what the client pipelined behind a command stays buffered,
// where the caller (STARTTLS, the relay) can see it.
func TestBuffered(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{"a1 NOOP\r\n", 0},
		{"a1 STARTTLS\r\na2 NOOP\r\n", len("a2 NOOP\r\n")},
		{"a1 LOGIN {5+}\r\nalice x\r\n\x16\x03\x01", 3},
	}
	for _, tt := range tests {
		r := newTestReader(tt.in, testMaxLine, testMaxLiteral)
		if _, err := r.ReadCommand(); err != nil {
			t.Fatalf("ReadCommand(%q) error = %v", tt.in, err)
		}
		if got := r.Buffered(); got != tt.want {
			t.Errorf("ReadCommand(%q) then Buffered() = %d, want %d", tt.in, got, tt.want)
		}
		rest := tt.in[len(tt.in)-tt.want:]
		got := r.BufferedBytes()
		if string(got) != rest {
			t.Errorf("ReadCommand(%q) then BufferedBytes() = %q, want %q", tt.in, got, rest)
		}
		if len(got) > 0 {
			got[0] ^= 0xff // a copy: the reader's buffer must not change
			if again := r.BufferedBytes(); string(again) != rest {
				t.Errorf("ReadCommand(%q) then BufferedBytes() after a write to the last copy = %q, want %q", tt.in, again, rest)
			}
		}
	}
}

func TestReadLine(t *testing.T) {
	const maxLine = 24
	tests := []struct {
		in      string
		want    string
		wantErr error
	}{
		{"AGFsaWNlAHNlY3JldA==\r\n", "AGFsaWNlAHNlY3JldA==", nil}, // SASL PLAIN response
		{"YWxpY2U=\r\n", "YWxpY2U=", nil},                         // SASL LOGIN user name
		{"*\r\n", "*", nil},                                       // cancel (RFC 9051 6.2.2)
		{"\r\n", "", nil},                                         // empty response
		{"=\n", "=", nil},
		{"abc\r\r\n", "abc\r", nil}, // only one CR belongs to the line ending
		{strings.Repeat("x", maxLine) + "\r\n", strings.Repeat("x", maxLine), nil},
		{strings.Repeat("x", maxLine) + "\n", strings.Repeat("x", maxLine), nil},
		{strings.Repeat("x", maxLine+1) + "\n", "", ErrLineTooLong},
		{strings.Repeat("x", maxLine+1) + "\r\n", "", ErrLineTooLong},
		{strings.Repeat("x", 100000) + "\r\n", "", ErrLineTooLong},
		{"", "", io.EOF},
		{"YWxp", "", io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		r := NewReader(bufio.NewReader(strings.NewReader(tt.in)), maxLine, testMaxLiteral)
		got, err := r.ReadLine()
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("ReadLine(%.40q) = %q, %v, want %v", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || string(got) != tt.want {
			t.Errorf("ReadLine(%.40q) = %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
}

// TestReadLineThenCommand: an AUTHENTICATE exchange reads continuation lines
// between commands without losing sync.
func TestReadLineThenCommand(t *testing.T) {
	in := "a1 AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\na2 NOOP\r\n"
	r := newTestReader(in, testMaxLine, testMaxLiteral)
	if cmd, err := r.ReadCommand(); err != nil || render(cmd) != `a1 AUTHENTICATE a"PLAIN"` {
		t.Fatalf("ReadCommand(%q) = %s, %v", in, render(cmd), err)
	}
	if line, err := r.ReadLine(); err != nil || string(line) != "AGFsaWNlAHNlY3JldA==" {
		t.Fatalf("ReadLine() = %q, %v, want %q", line, err, "AGFsaWNlAHNlY3JldA==")
	}
	if cmd, err := r.ReadCommand(); err != nil || render(cmd) != "a2 NOOP" {
		t.Errorf("ReadCommand() = %s, %v, want a2 NOOP", render(cmd), err)
	}
}

func TestValue(t *testing.T) {
	tests := []struct {
		v              Value
		isNIL, isStrng bool
	}{
		{Value{Kind: Atom, Bytes: []byte("NIL")}, true, true},
		{Value{Kind: Atom, Bytes: []byte("nil")}, true, true},
		{Value{Kind: Atom, Bytes: []byte("NILS")}, false, true},
		{Value{Kind: Quoted, Bytes: []byte("NIL")}, false, true}, // "NIL" is a string
		{Value{Kind: Literal, Bytes: []byte("NIL")}, false, true},
		{Value{Kind: List}, false, false},
		{Value{}, false, false},
	}
	for _, tt := range tests {
		var b strings.Builder
		renderValue(&b, tt.v)
		if got := tt.v.IsNIL(); got != tt.isNIL {
			t.Errorf("%s.IsNIL() = %v, want %v", b.String(), got, tt.isNIL)
		}
		if got := tt.v.IsString(); got != tt.isStrng {
			t.Errorf("%s.IsString() = %v, want %v", b.String(), got, tt.isStrng)
		}
	}
}

func BenchmarkReadCommandLogin(b *testing.B) {
	benchmarkReadCommand(b, "a1 LOGIN \"alice@example.com\" \"pa\\\"ss\\\\word-2024\"\r\n")
}

func BenchmarkReadCommandLiteral(b *testing.B) {
	benchmarkReadCommand(b, "a1 LOGIN {17}\r\nalice@example.com {16}\r\npass\"word\\2024!\r\n")
}

// benchmarkReadCommand reads the one command in over and over, reusing the
// readers as a session does.
func benchmarkReadCommand(b *testing.B, in string) {
	src := strings.NewReader(in)
	br := bufio.NewReader(src)
	r := NewReader(br, 8192, 8192)
	r.Continue = func(int64) error { return nil }
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		src.Reset(in)
		br.Reset(src)
		if _, err := r.ReadCommand(); err != nil {
			b.Fatalf("ReadCommand(%q) error = %v", in, err)
		}
	}
}
