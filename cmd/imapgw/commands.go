package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// command is one entry of the table that dispatches the command line and
// prints `imapgw -h`, each group's -h and the imapgw(8) manual page, so that
// none of them can drift from the others. A command's flags are not listed
// here: they are read from the flag set the command itself builds (see
// flagsOf).
type command struct {
	name    string // "run"; in a group, the subcommand: "add"
	args    string // what follows the name in a synopsis: "-config FILE"
	summary string // one line
	run     func(args []string, stdout, stderr io.Writer) int
	// sub makes the command a group ("bans"): its commands, dispatched by the
	// next argument.
	sub []command
	// implied marks the group's command run when the group is given no
	// command, or only flags ("imapgw backends -json" lists).
	implied bool
	footer  string // printed under a group's usage
}

// title is the first line of `imapgw -h` and the man page's NAME.
const title = "an IMAP gateway with its own TLS, ACME and brute-force policy"

const adminFooter = `Every command also takes -config FILE, or -admin ADDR and -token-file FILE,
-ca-file FILE for an endpoint with admin.tls, -json for scripts and -timeout.
`

// commands is the command table. A function, not a variable: `imapgw man`
// prints from it, and a variable referring to itself would be an
// initialization cycle.
func commands() []command {
	return []command{
		{name: "run", args: "-config FILE", summary: "run the gateway (SIGHUP reloads, SIGTERM drains)", run: func(a []string, _, e io.Writer) int { return runCmd(a, e) }},
		{name: "check", args: "-config FILE", summary: "validate a config file, like nginx -t", run: checkCmd},
		{name: "demo", summary: "everything embedded, on loopback, no root", run: demoCmd},
		{name: "bans", footer: adminFooter, sub: []command{
			{name: "list", summary: "active bans", run: bansList},
			{name: "add", args: "IP [-for 1h] [-reason TEXT]", summary: "ban IP's source prefix", run: bansAdd},
			{name: "del", args: "IP", summary: "lift the ban covering IP", run: bansDel},
		}},
		{name: "backends", footer: adminFooter, sub: []command{
			{name: "list", implied: true, summary: "the backend servers: state, weight, sessions, last check", run: backendsList},
			{name: "drain", args: "NAME [-kick]", summary: "no new logins to NAME; -kick also closes its sessions", run: backendsDrain},
			{name: "undrain", args: "NAME", summary: "NAME takes new logins again", run: backendsUndrain},
		}},
		{name: "users", footer: adminFooter, sub: []command{
			{name: "where", args: "USER", summary: "where USER's next login goes and why, its sessions", run: usersWhere},
			{name: "move", args: "USER NAME", summary: "close USER's sessions and pin it to server NAME", run: usersMove},
			{name: "kick", args: "USER", summary: "close USER's sessions", run: usersKick},
		}},
		{name: "status", summary: "sessions, logins, bans, backends, certificates", run: statusCmd},
		{name: "man", summary: "print the manual page imapgw(8) as roff", run: manCmd},
		{name: "version", summary: "print the version", run: versionCmd},
	}
}

// synopsis is what follows "imapgw" for c: "run -config FILE",
// "backends [list] | drain NAME [-kick] | undrain NAME".
func (c command) synopsis() string {
	if c.sub == nil {
		return strings.TrimSpace(c.name + " " + c.args)
	}
	parts := make([]string, len(c.sub))
	for i, s := range c.sub {
		parts[i] = s.subSynopsis()
	}
	return fmt.Sprintf("%-6s %s", c.name, strings.Join(parts, " | "))
}

// subSynopsis is a group command's synopsis after the group's name.
func (c command) subSynopsis() string {
	name := c.name
	if c.implied {
		name = "[" + name + "]"
	}
	return strings.TrimSpace(name + " " + c.args)
}

// usage is `imapgw -h`.
func usage() string {
	var b strings.Builder
	fmt.Fprintf(&b, "imapgw — %s\n\nUsage:\n", title)
	for _, c := range commands() {
		line := "imapgw " + c.synopsis()
		if c.sub == nil {
			line = fmt.Sprintf("imapgw %-6s %s", c.name, c.args)
		}
		if c.sub != nil || c.name == "version" {
			fmt.Fprintf(&b, "  %s\n", strings.TrimRight(line, " "))
			continue
		}
		fmt.Fprintf(&b, "  %-32s  %s\n", line, c.summary)
	}
	b.WriteString("\nRun \"imapgw COMMAND -h\" for a command's flags.\n")
	return b.String()
}

// groupUsage is `imapgw GROUP -h`.
func (c command) groupUsage() string {
	var b strings.Builder
	b.WriteString("Usage:\n")
	for _, s := range c.sub {
		fmt.Fprintf(&b, "  %-48s  %s\n", "imapgw "+c.name+" "+strings.TrimSpace(s.name+" "+s.args), s.summary)
	}
	b.WriteString(c.footer)
	return b.String()
}

// dispatch runs the command args[0] of list; group names the group for
// messages ("" at the top level).
func dispatch(list []command, group string, args []string, stdout, stderr io.Writer, usageText string) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") && !isHelp(args[0]) {
		for _, c := range list {
			if c.implied {
				return c.run(args, stdout, stderr)
			}
		}
	}
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return 2
	}
	name, rest := args[0], args[1:]
	if isHelp(name) || name == "help" {
		fmt.Fprint(stdout, usageText)
		return 0
	}
	for _, c := range list {
		switch {
		case c.name != name:
		case c.sub != nil:
			return dispatch(c.sub, "imapgw "+c.name, rest, stdout, stderr, c.groupUsage())
		default:
			return c.run(rest, stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "%s: unknown command %q\n\n%s", group, name, usageText)
	return 2
}

func isHelp(s string) bool {
	return s == "-h" || s == "-help" || s == "--help"
}

func versionCmd(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stdout, "imapgw", version)
	return 0
}

// flagCollector, passed as a command's stderr, receives the flag sets the
// command builds (newFlagSet hands them over) and discards what is written.
// Running a command with "-h" and a collector yields its flags without
// running it: the man page lists exactly what `-h` prints.
type flagCollector struct{ sets []*flag.FlagSet }

func (c *flagCollector) Write(p []byte) (int, error) { return len(p), nil }

// flagsOf returns the flags c defines, in the order -h lists them.
func flagsOf(c command) []*flag.Flag {
	col := &flagCollector{}
	c.run([]string{"-h"}, io.Discard, col)
	var out []*flag.Flag
	for _, fs := range col.sets {
		fs.VisitAll(func(f *flag.Flag) { out = append(out, f) })
	}
	return out
}
