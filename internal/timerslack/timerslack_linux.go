package timerslack

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Current returns the calling thread's timer slack.
func Current() (time.Duration, error) {
	ns, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	return time.Duration(ns), err
}

// Raise executes the program again, with the same arguments and environment,
// under a timer slack of Slack, when it runs with the kernel's default. It
// returns only when it did not: nil when the slack was chosen already (by this
// function, or by whoever started the process), an error when it could not.
// Call it before the program opens or starts anything: the process is
// replaced (same PID, same inherited descriptors).
func Raise() error {
	if _, again := os.LookupEnv(reexecEnv); again {
		os.Unsetenv(reexecEnv)
		return nil
	}
	runtime.LockOSThread() // the slack set below is this thread's, and exec must run on it
	defer runtime.UnlockOSThread()
	cur, err := Current()
	if err != nil || cur != kernelDefault {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(Slack), 0, 0, 0); err != nil {
		return err
	}
	err = syscall.Exec(exe, os.Args, append(os.Environ(), reexecEnv+"=1"))
	unix.Prctl(unix.PR_SET_TIMERSLACK, 0, 0, 0, 0) // 0: back to the thread's default
	return fmt.Errorf("executing %s again with a timer slack of %v: %w", exe, Slack, err)
}
