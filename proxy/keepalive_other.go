//go:build !linux

package proxy

import "syscall"

// Elsewhere inheritance is not relied on: start sets keep-alive per session.
const inheritsKeepAlive = false

func listenKeepAlive(string, string, syscall.RawConn) error { return nil }
