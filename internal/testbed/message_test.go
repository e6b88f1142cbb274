package testbed

import (
	"bytes"
	"io"
	"net/mail"
	"testing"
)

func TestMessage(t *testing.T) {
	minSize := len(Message(0))
	for _, size := range []int{0, 1, minSize - 1, minSize, minSize + 1, minSize + 2, minSize + 79, 1000, 4096, 65537, 1 << 20} {
		msg := Message(size)
		header := bytes.Index(msg, []byte("\r\n\r\n")) + 4
		if want := max(size, header+2); len(msg) != want {
			t.Errorf("len(Message(%d)) = %d, want %d", size, len(msg), want)
		}
		checkLines(t, size, msg)
		m, err := mail.ReadMessage(bytes.NewReader(msg))
		if err != nil {
			t.Errorf("Message(%d): mail.ReadMessage = %v", size, err)
			continue
		}
		if m.Header.Get("Subject") == "" || m.Header.Get("Message-Id") == "" {
			t.Errorf("Message(%d) lacks Subject or Message-ID", size)
		}
		if body, _ := io.ReadAll(m.Body); len(body) != len(msg)-header {
			t.Errorf("Message(%d) body = %d bytes, want %d", size, len(body), len(msg)-header)
		}
		if !bytes.Equal(msg, Message(size)) {
			t.Errorf("Message(%d) differs between calls, want deterministic", size)
		}
	}
}

// checkLines checks RFC 5322 section 2.1.1 and 2.3: CRLF only, lines of at most
// 998 characters, ASCII.
func checkLines(t *testing.T, size int, msg []byte) {
	t.Helper()
	if !bytes.HasSuffix(msg, []byte("\r\n")) {
		t.Errorf("Message(%d) does not end with CRLF", size)
	}
	for i, line := range bytes.Split(bytes.TrimSuffix(msg, []byte("\r\n")), []byte("\r\n")) {
		if len(line) > 998 {
			t.Errorf("Message(%d) line %d has %d characters, want at most 998", size, i, len(line))
		}
		for _, c := range line {
			if c == '\r' || c == '\n' || c > 126 || (c < 32 && c != '\t') {
				t.Errorf("Message(%d) line %d has byte %#x, want printable ASCII", size, i, c)
				break
			}
		}
	}
}
