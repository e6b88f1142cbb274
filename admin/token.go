package admin

import (
	"fmt"
	"os"
	"strings"
)

// ReadTokenFile reads admin.token_file: the token is the file's content with
// surrounding whitespace (a trailing newline from an editor or echo) removed.
// An empty file is an error: it would turn authentication off unnoticed.
func ReadTokenFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin.token_file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("admin.token_file %s: the file is empty", path)
	}
	if strings.ContainsFunc(tok, isSpaceOrControl) {
		return "", fmt.Errorf("admin.token_file %s: the token must be one line without spaces", path)
	}
	return tok, nil
}

// isSpaceOrControl rejects what an HTTP Authorization header cannot carry
// intact.
func isSpaceOrControl(r rune) bool { return r <= ' ' || r == 0x7f }
