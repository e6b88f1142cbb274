//go:build !linux

package timerslack

import (
	"errors"
	"time"
)

// Current reports that timer slack is Linux's.
func Current() (time.Duration, error) { return 0, errors.ErrUnsupported }

// Raise does nothing outside Linux.
func Raise() error { return nil }
