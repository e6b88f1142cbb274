package backend

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
	"time"
)

// userMap is the map file: users and domains pinned to a server by name. An
// entry wins over hashing (not over affinity) while its server is up and not
// draining.
type userMap struct {
	users   map[string]string // "alice@example.com" → server
	domains map[string]string // "example.org" → server
}

// lookup finds key's server: its own entry, else its domain's (after the last @).
func (m *userMap) lookup(key string) (string, bool) {
	if m == nil {
		return "", false
	}
	if s, ok := m.users[key]; ok {
		return s, true
	}
	if i := strings.LastIndexByte(key, '@'); i >= 0 {
		s, ok := m.domains[key[i+1:]]
		return s, ok
	}
	return "", false
}

// parseMap reads map file lines "user server" or "@domain server"; blank
// lines and those starting with # are skipped, and so is the rest of a line
// from a field starting with #. known says which server names exist. Errors
// name file:line.
func parseMap(name string, data []byte, known func(string) bool) (*userMap, error) {
	m := &userMap{users: map[string]string{}, domains: map[string]string{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 64<<10)
	for n := 1; sc.Scan(); n++ {
		if err := m.addLine(sc.Text(), known); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return m, nil
}

func (m *userMap) addLine(line string, known func(string) bool) error {
	f := strings.Fields(line)
	for i, w := range f {
		if strings.HasPrefix(w, "#") {
			f = f[:i]
			break
		}
	}
	switch {
	case len(f) == 0:
		return nil
	case len(f) != 2:
		return fmt.Errorf("want \"user server\" or \"@domain server\", got %d fields", len(f))
	case !known(f[1]):
		return fmt.Errorf("%q is not a configured server", f[1])
	}
	key, table := strings.ToLower(f[0]), m.users
	if strings.HasPrefix(key, "@") {
		key, table = key[1:], m.domains
		if key == "" || strings.Contains(key, "@") {
			return fmt.Errorf("%q is not a domain", f[0])
		}
	}
	if _, dup := table[key]; dup {
		return fmt.Errorf("%q is listed twice", f[0])
	}
	table[key] = f[1]
	return nil
}

// fileStamp is what says a file changed: its modification time, and its size
// for an edit within the file system's time granularity.
type fileStamp struct {
	mod  time.Time
	size int64
}

func stat(name string) (fileStamp, error) {
	fi, err := os.Stat(name)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi.ModTime(), fi.Size()}, nil
}

// loadMap reads and parses the map file, with the stamp it had before the read
// (an edit during the read is seen at the next check).
func loadMap(name string, known func(string) bool) (*userMap, fileStamp, error) {
	st, err := stat(name)
	if err != nil {
		return nil, st, fmt.Errorf("backend.map_file: %w", err)
	}
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, st, fmt.Errorf("backend.map_file: %w", err)
	}
	m, err := parseMap(name, data, known)
	if err != nil {
		return nil, st, fmt.Errorf("backend.map_file: %w", err)
	}
	return m, st, nil
}
