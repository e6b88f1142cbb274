// Command imapgw is an IMAP gateway: it terminates TLS for mail clients,
// decides with its own policy who may try to log in, logs in to the backend on
// the client's behalf and relays the session. See README.md.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `imapgw — an IMAP gateway with its own TLS, ACME and brute-force policy

Usage:
  imapgw run    -config FILE        run the gateway (SIGHUP reloads, SIGTERM drains)
  imapgw check  -config FILE        validate a config file, like nginx -t
  imapgw demo                       everything embedded, on loopback, no root
  imapgw bans   list | add IP [-for 1h] [-reason TEXT] | del IP
  imapgw backends [list] | drain NAME [-kick] | undrain NAME
  imapgw users  where USER | move USER NAME | kick USER
  imapgw status                     sessions, logins, bans, backends, certificates
  imapgw version

Run "imapgw COMMAND -h" for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return runCmd(rest, stderr)
	case "check":
		return checkCmd(rest, stdout, stderr)
	case "demo":
		return demoCmd(rest, stdout, stderr)
	case "bans":
		return bansCmd(rest, stdout, stderr)
	case "backends":
		return backendsCmd(rest, stdout, stderr)
	case "users":
		return usersCmd(rest, stdout, stderr)
	case "status":
		return statusCmd(rest, stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "imapgw", version)
		return 0
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "imapgw: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
}

// configFlag is the -config flag every command that reads the file shares.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "/etc/imapgw/imapgw.toml", "the configuration file")
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("imapgw "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}
