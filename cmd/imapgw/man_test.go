package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/imapgw/imapgw/internal/testbed"
)

// renderMan renders `imapgw man` with the real man(1), as plain ASCII text
// without line wrapping, and returns it with the page file's path.
func renderMan(t *testing.T) (text, page string) {
	t.Helper()
	testbed.Need(t, "man")
	var out, errb bytes.Buffer
	if code := run([]string{"man"}, &out, &errb); code != 0 {
		t.Fatalf("imapgw man = %d: %s", code, errb.String())
	}
	page = filepath.Join(t.TempDir(), "man8", "imapgw.8")
	must(t, os.MkdirAll(filepath.Dir(page), 0o755))
	must(t, os.WriteFile(page, out.Bytes(), 0o644))
	cmd := exec.Command(testbed.Path("man"), "-P", "cat", "-l", page)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "MANWIDTH=250", "MAN_KEEP_FORMATTING=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	rendered, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		// groff's warnings (a bad request, an unknown escape) go to stderr.
		t.Fatalf("man -l %s: %v\n%s", page, err, stderr.String())
	}
	return string(rendered), page
}

// helpOf runs `imapgw args... -h` and returns what it printed.
func helpOf(args ...string) string {
	var out bytes.Buffer
	run(append(args, "-h"), &out, &out)
	return out.String()
}

// TestManPage renders imapgw(8) with man and finds in it every command
// `imapgw -h` and the groups' -h list, each with every flag the command's own
// -h prints: the page and the help text come from one table and cannot drift.
func TestManPage(t *testing.T) {
	text, _ := renderMan(t)
	sections := manSections(text)
	cmdLine := regexp.MustCompile(`(?m)^  imapgw (\S+)`)
	flagLine := regexp.MustCompile(`(?m)^  -(\S+)`)
	var leaves [][]string
	for _, m := range cmdLine.FindAllStringSubmatch(helpOf(), -1) {
		group := helpOf(m[1])
		subs := regexp.MustCompile(`(?m)^  imapgw `+m[1]+` (\S+)`).FindAllStringSubmatch(group, -1)
		if !strings.HasPrefix(group, "Usage:\n  imapgw "+m[1]+" ") || len(subs) == 0 {
			leaves = append(leaves, []string{m[1]})
			continue
		}
		for _, s := range subs {
			leaves = append(leaves, []string{m[1], s[1]})
		}
	}
	if len(leaves) < 14 {
		t.Fatalf("found %d commands in -h, want every one: %q", len(leaves), leaves)
	}
	for _, leaf := range leaves {
		name := "imapgw " + strings.Join(leaf, " ")
		sec, ok := sections[name]
		if !ok {
			t.Errorf("imapgw(8) has no section for %q", name)
			continue
		}
		flags := flagLine.FindAllStringSubmatch(helpOf(leaf...), -1)
		for _, f := range flags {
			if !regexp.MustCompile(`(?m)^\s+-` + regexp.QuoteMeta(f[1]) + `\b`).MatchString(sec) {
				t.Errorf("imapgw(8), %s: flag -%s (from -h) missing:\n%s", name, f[1], sec)
			}
		}
		if len(leaf) == 2 && len(flags) < 6 {
			t.Errorf("%s -h lists %d flags, want the admin client's at least", name, len(flags))
		}
	}
	for _, want := range []string{"NAME\n       imapgw - an IMAP gateway", "SYNOPSIS", "SIGHUP", "/etc/imapgw/imapgw.toml", "READY=1"} {
		if !strings.Contains(text, want) {
			t.Errorf("imapgw(8) lacks %q", want)
		}
	}
}

// manSections splits man's rendering of COMMANDS into its subsections, by
// their heading ("imapgw bans add"; arguments dropped).
func manSections(text string) map[string]string {
	out := map[string]string{}
	head := regexp.MustCompile(`(?m)^   (imapgw( [a-z]+)+)`)
	idx := head.FindAllStringSubmatchIndex(text, -1)
	for i, m := range idx {
		end := len(text)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		out[text[m[2]:m[3]]] = text[m[0]:end]
	}
	return out
}
