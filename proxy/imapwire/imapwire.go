// Package imapwire reads IMAP commands as a server sees them before login
// (RFC 9051 section 9 grammar, with LITERAL+ and LITERAL- from RFC 7888): tags,
// atoms, quoted strings with escapes, literals {n} and {n+}, and parenthesized
// lists. Every read is bounded by a line limit and a literal limit.
//
// It imports no net: the caller hands it a bufio.Reader and a function that sends
// the continuation request a synchronizing literal needs. It does not know what
// the commands mean; the proxy's state machine does.
package imapwire

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
)

// Kind is the type of a Value.
type Kind uint8

// Value kinds.
const (
	Atom    Kind = iota + 1 // 1*ATOM-CHAR, also NIL and ASTRING's ']'; also a backslash (see isAtomChar)
	Quoted                  // "..." with \" and \\ unescaped
	Literal                 // {n} or {n+} followed by n bytes
	List                    // ( ... )
)

// Value is one argument of a command.
type Value struct {
	Kind  Kind
	Bytes []byte  // Atom, Quoted, Literal
	List  []Value // List
}

// IsString reports whether v is an astring (atom, quoted string or literal).
func (v Value) IsString() bool { return v.Kind == Atom || v.Kind == Quoted || v.Kind == Literal }

// IsNIL reports whether v is the atom NIL.
func (v Value) IsNIL() bool { return v.Kind == Atom && len(v.Bytes) == 3 && upper(v.Bytes) == "NIL" }

// Command is one tagged command line, literals included.
type Command struct {
	Tag  string
	Name string // upper-cased
	Args []Value
}

// maxLiterals bounds the literals in one command, so many small literals cannot
// add up past what the limits intend.
const maxLiterals = 4

// maxDepth bounds list nesting; ID needs one level.
const maxDepth = 4

// Errors. A *SyntaxError answers the command with BAD and the session goes on:
// ReadCommand has consumed the whole command, non-synchronizing literals
// included. ErrLineTooLong and ErrLiteralTooLarge end the session with BYE,
// because the rest of the oversized input cannot be told apart from the next
// command; ErrLiteralTooLarge also covers a malformed command's fifth
// non-synchronizing literal, which cannot be skipped within the limits.
var (
	ErrLineTooLong     = errors.New("line too long")
	ErrLiteralTooLarge = errors.New("literal too large")
)

// SyntaxError is a malformed command. Tag is set when the tag itself was valid,
// so the BAD can be tagged.
type SyntaxError struct {
	Tag string
	Msg string
}

func (e *SyntaxError) Error() string { return e.Msg }

// Reader reads commands from a client.
type Reader struct {
	r          *bufio.Reader
	maxLine    int
	maxLiteral int
	// Continue is called before the client may send a synchronizing literal of n
	// bytes; it must write a continuation request ("+ ...").
	Continue func(n int64) error

	line []byte // current segment being scanned
	pos  int
	lits int
}

// NewReader reads from r with the given limits (in bytes).
func NewReader(r *bufio.Reader, maxLine, maxLiteral int) *Reader {
	return &Reader{r: r, maxLine: maxLine, maxLiteral: maxLiteral}
}

// Buffered returns the bytes read from the connection but not yet parsed.
func (r *Reader) Buffered() int { return r.r.Buffered() }

// ReadLine reads one CRLF-terminated line (a bare LF is accepted) without the
// line ending, as AUTHENTICATE's client responses are sent.
func (r *Reader) ReadLine() ([]byte, error) {
	var line []byte
	for {
		frag, err := r.r.ReadSlice('\n')
		if len(line)+len(frag) > r.maxLine+2 {
			return nil, ErrLineTooLong
		}
		line = append(line, frag...)
		switch {
		case err == nil:
			line = line[:len(line)-1]
			if n := len(line); n > 0 && line[n-1] == '\r' {
				line = line[:n-1]
			}
			if len(line) > r.maxLine {
				// The check above allows for a CRLF; a bare LF line gets no extra byte.
				return nil, ErrLineTooLong
			}
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return nil, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}

// ReadCommand reads one whole command: its line, and every literal it carries
// together with the line segments that follow them.
func (r *Reader) ReadCommand() (*Command, error) {
	r.lits = 0
	if err := r.nextSegment(); err != nil {
		return nil, err
	}
	cmd, err := r.command()
	var se *SyntaxError
	if errors.As(err, &se) {
		if err := r.skipLiterals(); err != nil {
			return cmd, err
		}
	}
	return cmd, err
}

// command parses the segment just read, and those after its literals.
func (r *Reader) command() (*Command, error) {
	tag, err := r.tag()
	if err != nil {
		return nil, err
	}
	cmd := &Command{Tag: tag}
	name, err := r.commandName()
	if err != nil {
		return nil, &SyntaxError{Tag: tag, Msg: err.Error()}
	}
	cmd.Name = name
	for r.pos < len(r.line) {
		if err := r.sp(); err != nil {
			return cmd, &SyntaxError{Tag: tag, Msg: err.Error()}
		}
		v, err := r.value(0)
		if err != nil {
			return cmd, wrapSyntax(tag, err)
		}
		cmd.Args = append(cmd.Args, v)
	}
	return cmd, nil
}

// skipLiterals discards the rest of a malformed command: the non-synchronizing
// literals that end its segments, and the segments after them. Read as lines,
// their bytes would be taken for commands of their own — a CRLF injection for
// whoever fills a literal (ruby/net-imap#701). A synchronizing literal needs no
// skipping: its client waits for a "+" and gets the BAD instead.
func (r *Reader) skipLiterals() error {
	for {
		spec, ok := trailingNonSync(r.line)
		if !ok {
			return nil
		}
		n, err := literalSize(spec, r.maxLiteral)
		if err != nil {
			return err // the digits were checked: ErrLiteralTooLarge
		}
		if r.lits++; r.lits > maxLiterals {
			// The BAD cannot be sent before the bytes are read, so this is not a
			// syntax error the session can survive.
			return fmt.Errorf("%w: too many literals", ErrLiteralTooLarge)
		}
		if d, err := r.r.Discard(int(n)); err != nil {
			if d > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // as io.ReadFull reports it in literal
			}
			return ioError{err}
		}
		if err := r.nextSegment(); err != nil {
			return err
		}
	}
}

// trailingNonSync returns the digits of the "{n+}" that ends line, if one does.
func trailingNonSync(line []byte) ([]byte, bool) {
	if len(line) < 4 || line[len(line)-1] != '}' || line[len(line)-2] != '+' {
		return nil, false
	}
	end := len(line) - 2
	start := end
	for start > 0 && line[start-1] >= '0' && line[start-1] <= '9' {
		start--
	}
	if start == end || start == 0 || line[start-1] != '{' {
		return nil, false
	}
	return line[start:end], true
}

func wrapSyntax(tag string, err error) error {
	if errors.Is(err, ErrLineTooLong) || errors.Is(err, ErrLiteralTooLarge) || isIOError(err) {
		return err
	}
	return &SyntaxError{Tag: tag, Msg: err.Error()}
}

// ioError marks an error from the underlying reader, which ends the session.
type ioError struct{ err error }

func (e ioError) Error() string { return e.err.Error() }
func (e ioError) Unwrap() error { return e.err }

func isIOError(err error) bool {
	var e ioError
	return errors.As(err, &e)
}

// nextSegment reads the next line into r.line.
func (r *Reader) nextSegment() error {
	line, err := r.ReadLine()
	if err != nil {
		if errors.Is(err, ErrLineTooLong) {
			return err
		}
		return ioError{err}
	}
	r.line, r.pos = line, 0
	return nil
}

func (r *Reader) tag() (string, error) {
	start := r.pos
	for r.pos < len(r.line) && isTagChar(r.line[r.pos]) {
		r.pos++
	}
	if r.pos == start {
		return "", &SyntaxError{Msg: "missing tag"}
	}
	tag := string(r.line[start:r.pos])
	if r.pos == len(r.line) {
		return "", &SyntaxError{Tag: tag, Msg: "missing command"}
	}
	if err := r.sp(); err != nil {
		// The tag goes on with a byte a tag may not hold ("a+1", "a*"): it is not
		// a tag, so the error must not be tagged with a prefix of it.
		return "", &SyntaxError{Msg: "bad tag"}
	}
	return tag, nil
}

func (r *Reader) commandName() (string, error) {
	start := r.pos
	for r.pos < len(r.line) && isAlnum(r.line[r.pos]) {
		r.pos++
	}
	if r.pos == start || !isAlpha(r.line[start]) {
		return "", errors.New("missing command")
	}
	if r.pos < len(r.line) && r.line[r.pos] != ' ' {
		return "", errors.New("bad command name")
	}
	return upper(r.line[start:r.pos]), nil
}

func (r *Reader) sp() error {
	if r.pos >= len(r.line) || r.line[r.pos] != ' ' {
		return errors.New("expected space")
	}
	r.pos++
	return nil
}

func (r *Reader) value(depth int) (Value, error) {
	if r.pos >= len(r.line) {
		return Value{}, errors.New("missing argument")
	}
	switch c := r.line[r.pos]; {
	case c == '"':
		return r.quoted()
	case c == '{':
		return r.literal()
	case c == '(':
		return r.list(depth)
	case isAtomChar(c):
		return r.atom(), nil
	default:
		return Value{}, fmt.Errorf("unexpected character 0x%02x", c)
	}
}

func (r *Reader) atom() Value {
	start := r.pos
	for r.pos < len(r.line) && isAtomChar(r.line[r.pos]) {
		r.pos++
	}
	return Value{Kind: Atom, Bytes: r.line[start:r.pos]}
}

// quoted returns the string unescaped. Without escapes it shares the line's
// memory, as atoms do (each segment is a fresh slice); the first escape makes
// a copy, sized once.
func (r *Reader) quoted() (Value, error) {
	r.pos++ // opening quote
	start := r.pos
	var b []byte // the unescaped copy, once one is needed
	for r.pos < len(r.line) {
		c := r.line[r.pos]
		r.pos++
		switch c {
		case '"':
			if b == nil {
				return Value{Kind: Quoted, Bytes: r.line[start : r.pos-1]}, nil
			}
			return Value{Kind: Quoted, Bytes: b}, nil
		case '\\':
			if r.pos >= len(r.line) || (r.line[r.pos] != '"' && r.line[r.pos] != '\\') {
				return Value{}, errors.New("bad escape in quoted string")
			}
			if b == nil {
				b = append(make([]byte, 0, len(r.line)-start), r.line[start:r.pos-1]...)
			}
			b = append(b, r.line[r.pos])
			r.pos++
		case 0:
			return Value{}, errors.New("NUL in quoted string")
		case '\r':
			// TEXT-CHAR excludes CR (RFC 9051 section 9); LF cannot occur, it ends the line.
			return Value{}, errors.New("CR in quoted string")
		default:
			if b != nil {
				b = append(b, c)
			}
		}
	}
	return Value{}, errors.New("unterminated quoted string")
}

// literal parses "{n}" or "{n+}" at the end of the segment, reads the n bytes,
// then continues with the next segment.
func (r *Reader) literal() (Value, error) {
	rest := r.line[r.pos:]
	if len(rest) < 2 || rest[len(rest)-1] != '}' {
		return Value{}, errors.New("literal must end the line")
	}
	spec, sync := rest[1:len(rest)-1], true
	if len(spec) > 0 && spec[len(spec)-1] == '+' {
		spec, sync = spec[:len(spec)-1], false
	}
	n, err := literalSize(spec, r.maxLiteral)
	if err != nil {
		return Value{}, err
	}
	if r.lits++; r.lits > maxLiterals {
		return Value{}, errors.New("too many literals")
	}
	if sync && r.Continue != nil {
		if err := r.Continue(n); err != nil {
			return Value{}, ioError{err}
		}
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r.r, b); err != nil {
		return Value{}, ioError{err}
	}
	if err := r.nextSegment(); err != nil {
		return Value{}, err
	}
	return Value{Kind: Literal, Bytes: b}, nil
}

// literalSize parses a literal's number (1*DIGIT). A number over maxLiteral is
// ErrLiteralTooLarge however many digits it has: the syntax is valid, and the
// bytes of a non-synchronizing literal are already on their way, so the session
// cannot go on as if the line had been a mere syntax error.
func literalSize(spec []byte, maxLiteral int) (int64, error) {
	if len(spec) == 0 {
		return 0, errors.New("bad literal size")
	}
	for _, c := range spec {
		if c < '0' || c > '9' {
			return 0, errors.New("bad literal size")
		}
	}
	// RFC 9051 numbers are 32-bit; the clamp also keeps n*10 from overflowing.
	limit := min(uint64(max(maxLiteral, 0)), math.MaxUint32)
	var n uint64
	for _, c := range spec {
		if n = n*10 + uint64(c-'0'); n > limit {
			return 0, fmt.Errorf("%w: limit %d bytes", ErrLiteralTooLarge, maxLiteral)
		}
	}
	return int64(n), nil
}

func (r *Reader) list(depth int) (Value, error) {
	if depth >= maxDepth {
		return Value{}, errors.New("lists nested too deep")
	}
	r.pos++ // '('
	v := Value{Kind: List}
	for {
		if r.pos >= len(r.line) {
			return Value{}, errors.New("unterminated list")
		}
		if r.line[r.pos] == ')' {
			r.pos++
			return v, nil
		}
		if len(v.List) > 0 {
			if err := r.sp(); err != nil {
				return Value{}, err
			}
		}
		e, err := r.value(depth + 1)
		if err != nil {
			return Value{}, err
		}
		v.List = append(v.List, e)
	}
}

// isAtomChar: any CHAR8 except atom-specials (RFC 9051: "(" / ")" / "{" / SP /
// CTL / list-wildcards / quoted-specials / resp-specials). ']' is allowed
// because ASTRING-CHAR includes it; '%' and '*' because LIST patterns and SASL
// cancel use them; 8-bit bytes because clients send UTF-8 passwords as atoms;
// '\\' because Python's imaplib sends LOGIN's user name unquoted, and Exchange
// shared-mailbox names (user@dom\shared@dom) contain it (issue 10 point 6).
// The gateway re-encodes every value it forwards, so this leniency stays here.
func isAtomChar(c byte) bool {
	switch c {
	case '(', ')', '{', ' ', '"', 0x7f:
		return false
	}
	return c > 0x20
}

// isTagChar: ASTRING-CHAR except "+", and 7-bit only.
func isTagChar(c byte) bool {
	return c < 0x80 && c != '+' && c != '%' && c != '*' && c != '\\' && isAtomChar(c)
}

func isAlpha(c byte) bool { return (c|0x20) >= 'a' && (c|0x20) <= 'z' }
func isAlnum(c byte) bool { return isAlpha(c) || (c >= '0' && c <= '9') }

func upper(b []byte) string {
	s := make([]byte, len(b))
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		s[i] = c
	}
	return string(s)
}
