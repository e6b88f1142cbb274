//go:build !linux

package proxy

// Elsewhere than Linux a relay direction keeps its goroutine while idle: no
// relay is watched, so none is asked to park (see park_linux.go).

func watchRelay(*relay) bool { return false }
func unwatchRelay(*relay)    {}
func parkRelay(*relay) error { return nil }
func wakeRelay(*relay)       {}

func parkedRelays() int { return 0 }
