package testbed

import (
	"bytes"
	"fmt"
)

// bodyLine is the content length of a body line: under RFC 5322's 78-character
// recommendation, far under its 998-character limit.
const bodyLine = 76

// Message returns a valid RFC 5322 message (CRLF line endings, lines of at most 998
// characters, ASCII only) of exactly size bytes, or of its minimum size (a few
// hundred bytes of header) when size is smaller. The content is deterministic, so
// tests can compare what comes back byte for byte.
func Message(size int) []byte {
	var b bytes.Buffer
	b.Grow(size)
	fmt.Fprintf(&b, "From: Alice <alice@example.com>\r\n"+
		"To: Bob <bob@example.com>\r\n"+
		"Subject: testbed message of %d bytes\r\n"+
		"Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n"+
		"Message-ID: <testbed-%d@example.com>\r\n"+
		"MIME-Version: 1.0\r\n"+
		"Content-Type: text/plain; charset=us-ascii\r\n"+
		"\r\n", size, size)
	writeBody(&b, size-b.Len())
	return b.Bytes()
}

// writeBody writes n bytes (at least 2) of CRLF-terminated lines. Full lines take
// bodyLine+2 bytes; a remainder of one byte cannot be a line of its own, so it
// lengthens the last full line instead.
func writeBody(b *bytes.Buffer, n int) {
	n = max(n, 2)
	full, rest := n/(bodyLine+2), n%(bodyLine+2)
	for i := range full {
		width := bodyLine
		if rest == 1 && i == full-1 {
			width++
		}
		writeLine(b, i, width)
	}
	if rest >= 2 {
		writeLine(b, full, rest-2)
	}
}

// writeLine writes line number i, width characters of printable text, and CRLF.
// Each line starts with its number so a corrupted relay shows where.
func writeLine(b *bytes.Buffer, i, width int) {
	const text = "The quick brown fox jumps over the lazy dog 0123456789. "
	line := fmt.Appendf(nil, "%07d ", i)
	for len(line) < width {
		line = append(line, text[(len(line)+i)%len(text)])
	}
	b.Write(line[:width])
	b.WriteString("\r\n")
}
