package conf

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Duration is a time.Duration written as a Go duration string ("30s", "1h").
type Duration struct{ time.Duration }

// D wraps d.
func D(d time.Duration) Duration { return Duration{d} }

// UnmarshalText parses a Go duration string; negative durations are refused.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("bad duration %q (want e.g. \"30s\", \"15m\", \"1h\")", b)
	}
	if v < 0 {
		return fmt.Errorf("negative duration %q", b)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as Go formats it.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Error is one problem in a config file.
type Error struct {
	File string
	Line int    // 0 when the key is absent from the file (a missing requirement)
	Key  string // dotted, e.g. "bans.ban" or "listen[2].tls"
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Key, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", e.File, e.Key, e.Msg)
}

// Errors is every problem found in one file, in file order.
type Errors []*Error

func (es Errors) Error() string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Load reads and validates the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes data (named name in errors) over Default and validates it.
func Parse(name string, data []byte) (*Config, error) {
	c := Default()
	c.Path = name
	lines := indexLines(data)
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(c)
	if err != nil {
		return nil, Errors{decodeError(name, lines, err)}
	}
	var errs Errors
	for _, k := range md.Undecoded() {
		key := k.String()
		errs = append(errs, &Error{File: name, Line: lines.find(key), Key: key, Msg: "unknown key"})
	}
	for i := range c.Listen {
		if c.Listen[i].TLS == "" {
			c.Listen[i].TLS = defaultListen().TLS
		}
	}
	c.Backend.fillServers(lines)
	v := validator{file: name, lines: lines}
	v.config(c)
	errs = append(errs, v.errs...)
	if len(errs) > 0 {
		errs.sort()
		return nil, errs
	}
	return c, nil
}

func (es Errors) sort() {
	// Insertion sort keeps equal lines in discovery order; lists are short.
	for i := 1; i < len(es); i++ {
		for j := i; j > 0 && es[j].Line < es[j-1].Line; j-- {
			es[j], es[j-1] = es[j-1], es[j]
		}
	}
}

// decodeError turns a decoder error into an Error with a line and a key.
func decodeError(name string, lines lineIndex, err error) *Error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		key := pe.LastKey
		line := pe.Position.Line
		if line == 0 && key != "" {
			line = lines.find(key)
		}
		if key == "" {
			key = "syntax"
		}
		return &Error{File: name, Line: line, Key: key, Msg: pe.Message}
	}
	// Type mismatches come as plain errors: "toml: line N (last key "k"): msg".
	if m := decodeErrRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Error{File: name, Line: line, Key: m[2], Msg: m[3]}
	}
	return &Error{File: name, Key: "file", Msg: err.Error()}
}

var decodeErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

// lineIndex maps dotted keys to the line that sets them. Keys inside the Nth
// [[listen]] table are stored both as "listen[N].key" and "listen.key" (first one).
type lineIndex map[string]int

func (li lineIndex) find(key string) int { return li[key] }

// indexLines scans TOML text for table headers and "key =" lines. It is not a
// TOML parser: it only needs to place keys that the real decoder accepted or named.
func indexLines(data []byte) lineIndex {
	li := lineIndex{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	table, arrayTable := "", ""
	counts := map[string]int{}
	for n := 1; sc.Scan(); n++ {
		s := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(s, "[["):
			name := strings.TrimSpace(strings.Trim(strings.SplitN(s, "]]", 2)[0], "[ "))
			counts[name]++
			table, arrayTable = name, fmt.Sprintf("%s[%d]", name, counts[name])
			li.set(table, n)
			li.set(arrayTable, n)
		case strings.HasPrefix(s, "["):
			table, arrayTable = strings.TrimSpace(strings.Trim(strings.SplitN(s, "]", 2)[0], "[ ")), ""
			li.set(table, n)
		default:
			k, _, ok := strings.Cut(s, "=")
			if !ok || strings.HasPrefix(s, "#") {
				continue
			}
			k = strings.Trim(strings.TrimSpace(k), `"'`)
			li.set(join(table, k), n)
			if arrayTable != "" {
				li.set(join(arrayTable, k), n)
			}
		}
	}
	return li
}

func (li lineIndex) set(key string, n int) {
	if _, ok := li[key]; !ok {
		li[key] = n
	}
}

func join(table, key string) string {
	if table == "" {
		return key
	}
	return table + "." + key
}

// fillServers applies the long form's defaults: an absent weight is
// DefaultWeight, and [[backend.server]] tables replace the default short form
// (a file setting both is refused by the validator).
func (b *Backend) fillServers(lines lineIndex) {
	for i := range b.Server {
		if b.Server[i].Weight == 0 && lines.find(serverKey(i, "weight")) == 0 {
			b.Server[i].Weight = DefaultWeight
		}
	}
	if len(b.Server) > 0 && lines.find("backend.servers") == 0 {
		b.Servers = nil
	}
}

func serverKey(i int, key string) string {
	return "backend.server[" + strconv.Itoa(i+1) + "]." + key
}

func listenKey(i int, key string) string { return "listen[" + strconv.Itoa(i+1) + "]." + key }
