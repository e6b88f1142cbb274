package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/imapgw/imapgw/admin"
)

func backendsList(args []string, stdout, stderr io.Writer) int {
	f := newAdminFlags("backends list", stderr)
	c, code := f.setup(args, 0, stderr)
	if c == nil {
		return code
	}
	ctx, cancel := f.context()
	defer cancel()
	list, err := c.Backends(ctx)
	if err != nil {
		return fail(stderr, "backends list", err)
	}
	if *f.json {
		return printJSON(stdout, stderr, list)
	}
	printBackends(stdout, list, time.Now())
	return 0
}

func backendsDrain(args []string, stdout, stderr io.Writer) int {
	f := newAdminFlags("backends drain", stderr)
	kick := f.fs.Bool("kick", false, "also close the server's sessions (their clients reconnect elsewhere)")
	c, code := f.setup(args, 1, stderr)
	if c == nil {
		return code
	}
	ctx, cancel := f.context()
	defer cancel()
	r, err := c.Drain(ctx, f.args[0], *kick)
	if err != nil {
		return fail(stderr, "backends drain", err)
	}
	if *f.json {
		return printJSON(stdout, stderr, r)
	}
	if r.Kick {
		fmt.Fprintf(stdout, "draining %s: no new logins, its sessions closed\n", r.Backend)
	} else {
		fmt.Fprintf(stdout, "draining %s: no new logins, its sessions go on\n", r.Backend)
	}
	return 0
}

func backendsUndrain(args []string, stdout, stderr io.Writer) int {
	f := newAdminFlags("backends undrain", stderr)
	c, code := f.setup(args, 1, stderr)
	if c == nil {
		return code
	}
	ctx, cancel := f.context()
	defer cancel()
	r, err := c.Undrain(ctx, f.args[0])
	if err != nil {
		return fail(stderr, "backends undrain", err)
	}
	if *f.json {
		return printJSON(stdout, stderr, r)
	}
	fmt.Fprintf(stdout, "undrained %s: it takes new logins when up\n", r.Backend)
	return 0
}

func usersWhere(args []string, stdout, stderr io.Writer) int {
	f := newAdminFlags("users where", stderr)
	c, code := f.setup(args, 1, stderr)
	if c == nil {
		return code
	}
	ctx, cancel := f.context()
	defer cancel()
	u, err := c.Where(ctx, f.args[0])
	if err != nil {
		return fail(stderr, "users where", err)
	}
	if *f.json {
		return printJSON(stdout, stderr, u)
	}
	printUser(stdout, u, time.Now())
	return 0
}

func usersMove(args []string, stdout, stderr io.Writer) int {
	f := newAdminFlags("users move", stderr)
	c, code := f.setup(args, 2, stderr)
	if c == nil {
		return code
	}
	ctx, cancel := f.context()
	defer cancel()
	r, err := c.Move(ctx, f.args[0], f.args[1])
	if err != nil {
		return fail(stderr, "users move", err)
	}
	if *f.json {
		return printJSON(stdout, stderr, r)
	}
	fmt.Fprintf(stdout, "moved %s to %s (%s closed)\n", r.User, r.Backend, plural(r.Closed, "session"))
	return 0
}

func usersKick(args []string, stdout, stderr io.Writer) int {
	f := newAdminFlags("users kick", stderr)
	c, code := f.setup(args, 1, stderr)
	if c == nil {
		return code
	}
	ctx, cancel := f.context()
	defer cancel()
	r, err := c.Kick(ctx, f.args[0])
	if err != nil {
		return fail(stderr, "users kick", err)
	}
	if *f.json {
		return printJSON(stdout, stderr, r)
	}
	fmt.Fprintf(stdout, "kicked %s (%s closed)\n", r.User, plural(r.Closed, "session"))
	return 0
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func printBackends(w io.Writer, list []admin.BackendInfo, now time.Time) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no backend servers")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKEND\tADDRESS\tWEIGHT\tSTATE\tSESSIONS\tCHECKED\tERROR\tCAPABILITIES")
	for _, b := range list {
		checked := "never"
		if !b.LastCheck.IsZero() {
			checked = fmtDuration(now.Sub(b.LastCheck)) + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%s\t%s\n", b.Name, b.Address, b.Weight, b.State, b.Sessions,
			checked, orDash(b.LastError), orDash(strings.Join(b.Capabilities, " ")))
	}
	tw.Flush()
}

func printUser(w io.Writer, u admin.UserInfo, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "user\t%s\n", u.User)
	if u.Backend == "" {
		fmt.Fprintf(tw, "next login\tnowhere: no backend server is up\n")
	} else {
		fmt.Fprintf(tw, "next login\t%s (%s)\n", u.Backend, u.Reason)
	}
	if u.Pinned != "" {
		pin := u.Pinned
		if !u.Until.IsZero() {
			pin += ", until " + fmtTime(u.Until)
		}
		fmt.Fprintf(tw, "pinned to\t%s\n", pin)
	}
	fmt.Fprintf(tw, "open sessions\t%d\n", u.Open)
	tw.Flush()
	if len(u.Sessions) > 0 {
		fmt.Fprintln(w)
		printSessions(w, u.Sessions, now)
	}
}
