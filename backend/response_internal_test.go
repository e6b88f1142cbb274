package backend

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestReadResponse: literals are inlined, and every size a hostile backend can
// announce stays within MaxReplyBytes without overflowing the check (issue 11.3).
func TestReadResponse(t *testing.T) {
	long := strings.Repeat("x", 5000) // longer than the bufio buffer: read in fragments
	cases := []struct {
		in      string
		want    string
		wantErr error
	}{
		{"* ID (\"name\" {7}\r\nDovecot)\r\ngwl OK done\r\n", "* ID (\"name\" {7}\r\nDovecot)", nil},
		{"* X {3+}\r\nabc {0}\r\n\r\n", "* X {3+}\r\nabc {0}\r\n", nil},
		{"* X " + long + " {3}\r\nabc\r\n", "* X " + long + " {3}\r\nabc", nil},
		{"gwl NO LOGIN failed.\r\n", "gwl NO LOGIN failed.", nil},
		{"bare LF\n", "bare LF", nil},
		// Not literals: RFC 9051's number is digits only.
		{"* OK {-1}\r\n", "* OK {-1}", nil},
		{"* OK {+5}\r\n", "* OK {+5}", nil},
		{"* OK {}\r\n", "* OK {}", nil},
		{"* OK {5 }\r\n", "* OK {5 }", nil},
		{"* OK {0x10}\r\n", "* OK {0x10}", nil},
		// Sizes no reply may have, up to and past the int64 range.
		{"* OK {65536}\r\n", "", ErrResponseTooLong},
		{"* OK {2147483648}\r\n", "", ErrResponseTooLong},
		{"* OK {9223372036854775807}\r\n", "", ErrResponseTooLong},
		{"* OK {9223372036854775808}\r\n", "", ErrResponseTooLong},
		{"* OK {18446744073709551616+}\r\n", "", ErrResponseTooLong},
		{"* OK {" + strings.Repeat("9", 400) + "}\r\n", "", ErrResponseTooLong},
		{"* OK {00000000000000000000000000003}\r\nabc\r\n", "* OK {00000000000000000000000000003}\r\nabc", nil},
		// A line with no end, and a literal announced in a line's last fragment.
		{"* OK " + strings.Repeat("x", MaxReplyBytes), "", ErrResponseTooLong},
		{"* OK " + strings.Repeat("x", MaxReplyBytes-20) + " {30}\r\n", "", ErrResponseTooLong},
		// Cut short.
		{"* OK {10}\r\nabc", "", io.ErrUnexpectedEOF},
		{"* OK no end", "", io.EOF},
	}
	for _, tc := range cases {
		br := bufio.NewReaderSize(strings.NewReader(tc.in), 4096)
		got, err := NewReplyReader(br).Next()
		if got != tc.want || !errors.Is(err, tc.wantErr) {
			t.Errorf("NewReplyReader(%.60q).Next() = %.60q, %v, want %.60q, %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestReplyReaderBounds: the responses to one command are bounded in number and
// in bytes together, so neither endless untagged lines nor many long ones
// make a login keep more than MaxReplyBytes.
func TestReplyReaderBounds(t *testing.T) {
	cases := []struct {
		name    string
		line    string
		wantErr error
		within  int // responses read before the error
	}{
		{"blank lines", "\r\n", ErrTooManyResponses, MaxReplyLines},
		{"untagged", "* OK still here\r\n", ErrTooManyResponses, MaxReplyLines},
		{"continuations", "+\r\n", ErrTooManyResponses, MaxReplyLines},
		{"long untagged", "* OK " + strings.Repeat("y", 10000) + "\r\n", ErrResponseTooLong, MaxReplyBytes / 10000},
		{"literals", "* X {8000}\r\n" + strings.Repeat("z", 8000) + "\r\n", ErrResponseTooLong, MaxReplyBytes / 8000},
	}
	for _, tc := range cases {
		in := strings.Repeat(tc.line, MaxReplyLines+10) + "gwl OK done\r\n"
		rr := NewReplyReader(bufio.NewReaderSize(strings.NewReader(in), 4096))
		n, kept := 0, 0
		var err error
		for {
			var l string
			if l, err = rr.Next(); err != nil {
				break
			}
			n++
			kept += len(l)
		}
		if !errors.Is(err, tc.wantErr) || n > tc.within {
			t.Errorf("%s: %d responses, then %v, want at most %d, then %v", tc.name, n, err, tc.within, tc.wantErr)
		}
		if kept > MaxReplyBytes {
			t.Errorf("%s: %d bytes returned, want at most %d", tc.name, kept, MaxReplyBytes)
		}
	}
}
