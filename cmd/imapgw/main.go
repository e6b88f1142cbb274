// Command imapgw is an IMAP gateway: it terminates TLS for mail clients,
// decides with its own policy who may try to log in, logs in to the backend on
// the client's behalf and relays the session. See README.md.
package main

import (
	"flag"
	"io"
	"os"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand through the command table and returns the
// exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "-version" || args[0] == "--version") {
		return versionCmd(nil, stdout, stderr)
	}
	return dispatch(commands(), "imapgw", args, stdout, stderr, usage())
}

// configFlag is the -config flag every command that reads the file shares.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "/etc/imapgw/imapgw.toml", "the configuration file")
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("imapgw "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	if c, ok := stderr.(*flagCollector); ok {
		c.sets = append(c.sets, fs) // for the man page: see flagsOf
	}
	return fs
}
