package main

import (
	"fmt"
	"io"
)

// bansCmd and statusCmd talk to the admin endpoint (issue 5).
func bansCmd(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "imapgw bans: the admin endpoint is not built yet")
	return 1
}

func statusCmd(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "imapgw status: the admin endpoint is not built yet")
	return 1
}
