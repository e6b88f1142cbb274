package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/imapgw/imapgw/conf"
)

// checkCmd validates a config file: every error with its file, line and key.
func checkCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check", stderr)
	path := configFlag(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := conf.Load(*path)
	if err != nil {
		var errs conf.Errors
		if errors.As(err, &errs) {
			for _, e := range errs {
				fmt.Fprintln(stderr, e)
			}
		} else {
			fmt.Fprintln(stderr, err)
		}
		return 1
	}
	for _, w := range checkWarnings(cfg) {
		fmt.Fprintln(stderr, w)
	}
	if c := cfg.Cluster; c.Enabled() {
		fmt.Fprintf(stdout, "cluster: redis %s, node %q, key_prefix %q, timeout %s\n", conf.RedactURL(c.Redis), c.Node, c.KeyPrefix, c.Timeout)
	}
	fmt.Fprintf(stdout, "%s: ok\n", *path)
	return 0
}
