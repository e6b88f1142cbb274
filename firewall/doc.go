// Package firewall mirrors the limiter's bans into the kernel (issue 15): one
// nftables table (inet, bans.firewall_table) with a set per address family
// (flags interval, timeout: a /64 is one element, and a ban's remaining time
// is its element's timeout) and one chain on the input hook, before the usual
// filter chains, that drops TCP to the gateway's own listening ports from
// those sets. The kernel then drops a banned source's SYNs and the process
// never sees them.
//
// It talks netlink (github.com/google/nftables; no nft binary), touches no
// other table, and needs CAP_NET_ADMIN. It implements limiter.BanListener;
// package main wires it in only when bans.firewall = "nftables", so the
// single-node path without it imports no netlink. It does not decide bans.
package firewall
