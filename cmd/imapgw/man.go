package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// manCmd prints the manual page imapgw(8) in roff, built from the command
// table and the commands' own flag sets: `make man` writes docs/imapgw.8.
func manCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("man", stderr)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	io.WriteString(stdout, manPage())
	return 0
}

// manPage renders imapgw(8).
func manPage() string {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH IMAPGW 8 \"\" \"imapgw %s\" \"System Administration\"\n", roffEscape(version))
	fmt.Fprintf(&b, ".SH NAME\nimapgw \\- %s\n", roffEscape(title))
	b.WriteString(".SH SYNOPSIS\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, ".B imapgw\n%s\n.br\n", roffEscape(strings.Join(strings.Fields(c.synopsis()), " ")))
	}
	b.WriteString(manDescription)
	b.WriteString(".SH COMMANDS\n")
	for _, c := range commands() {
		if c.sub == nil {
			manCommand(&b, "imapgw "+c.name, c)
			continue
		}
		for _, s := range c.sub {
			manCommand(&b, "imapgw "+c.name+" "+s.name, s)
		}
		if c.footer != "" {
			fmt.Fprintf(&b, ".PP\n%s", roffText(c.footer))
		}
	}
	b.WriteString(manTrailer)
	return b.String()
}

// manCommand writes one command: its synopsis, summary and flags.
func manCommand(b *strings.Builder, name string, c command) {
	fmt.Fprintf(b, ".SS %s\n", roffEscape(strings.TrimSpace(name+" "+c.args)))
	fmt.Fprintf(b, "%s\n", roffText(c.summary))
	for _, f := range flagsOf(c) {
		typ, use := flag.UnquoteUsage(f)
		fmt.Fprintf(b, ".TP\n.B \\-%s", roffEscape(f.Name))
		if typ != "" {
			fmt.Fprintf(b, " \\fI%s\\fR", roffEscape(typ))
		}
		b.WriteString("\n" + roffText(use))
		if d := f.DefValue; d != "" && d != "false" && d != "0" && d != "0s" {
			if typ == "string" {
				d = fmt.Sprintf("%q", d) // as -h prints it
			}
			fmt.Fprintf(b, "(default %s)\n", roffEscape(d))
		}
	}
}

// roffEscape escapes backslashes and hyphens (a plain - may be set as a
// hyphenation point; \- is the minus flags are written with).
func roffEscape(s string) string {
	return strings.NewReplacer(`\`, `\e`, "-", `\-`).Replace(s)
}

// roffText escapes s as running text: lines starting with . or ' would be
// requests.
func roffText(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		line = roffEscape(line)
		if strings.HasPrefix(line, ".") || strings.HasPrefix(line, "'") {
			line = `\&` + line
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

const manDescription = `.SH DESCRIPTION
imapgw terminates TLS for mail clients (implicit TLS and STARTTLS), reads the
IMAP conversation up to authentication, decides with its own policy whether the
client may try at all, logs in to the backend IMAP server on the client's
behalf and then relays the session's bytes untouched. It gets and renews its
certificates over ACME. It is configured by one TOML file and queried over an
HTTP admin endpoint, which the commands below other than
.BR run ,
.B check
and
.B demo
call.
`

const manTrailer = `.SH SIGNALS
.TP
.B SIGHUP
re-read the configuration file; an invalid one is logged and the running
configuration stays.
.TP
.BR SIGTERM ", " SIGINT
stop accepting, let sessions finish for
.I server.drain_timeout
then close them, and exit 0.
.SH SYSTEMD
Under a unit of Type=notify, imapgw sends READY=1 once its listeners are up and
a certificate is loaded, RELOADING=1 and READY=1 around a reload, STOPPING=1
when the drain begins, and WATCHDOG=1 every half WatchdogSec.
.SH FILES
.TP
.I /etc/imapgw/imapgw.toml
the configuration file; every key, with its default, is in imapgw.example.toml
under /usr/local/share/doc/imapgw or /usr/share/doc/imapgw.
.TP
.I /var/lib/imapgw
.IR server.state_dir :
ACME account and certificates, ban state.
.SH EXIT STATUS
0 on success, 1 on an error, 2 on a usage error.
.SH SEE ALSO
.BR systemd.service (5),
.BR nft (8)
`
