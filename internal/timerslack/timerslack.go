// Package timerslack runs the gateway with a timer slack of a few milliseconds
// instead of the kernel's 50 µs.
//
// A thread's timer slack is how late the kernel may fire its timers (sleeps,
// epoll and futex timeouts) so that it can serve several with one wake-up. The
// Go runtime's sysmon thread sleeps 20 µs at a time while the program is busy
// and is woken again by the first system call after every idle moment: at 2
// clients it took a context switch every 170 µs and 17 % of the gateway's CPU
// per login cycle, and imapgw switched context 17–19 times per login against
// HAProxy's 10. With a slack of 4 ms it sleeps until the next timer interrupt
// instead: 8.7 switches per login, 20–28 % less CPU per login at 2 clients
// and 10–16 % less at 8 and 64 (issue 16). Timers in the gateway are deadlines and
// delays of a second or more; firing them up to 4 ms late changes nothing.
//
// The cost is in the tail at low load. The scheduler has one short sleep of
// its own: a thread about to take a goroutine another thread has just made
// ready first backs off for 3 µs (runqgrab in runtime/proc.go), and under the
// slack that sleep lasts until the next interrupt, 1–3 ms measured with
// strace, holding its processor meanwhile. At 2 clients make bench's 99th
// percentile login latency was 6.8 ms against HAProxy's 6.0 while the median
// was below HAProxy's. With a slack of 1 ms it was 5.4 ms against 5.9 (two
// builds side by side, 3 rounds), for 8–20 % more CPU and 0–8 % fewer logins.
// Giving the slack to sysmon alone would avoid the trade, but setting another
// thread's slack needs CAP_SYS_NICE, which the gateway does not run with.
//
// The slack of a thread is inherited by the threads it creates and kept across
// execve, and sysmon exists before any of the program's code runs, so Raise
// sets it on its own thread and executes the program again: every thread of
// the new image starts with it. A slack chosen by whoever started the process
// (systemd's TimerSlackNSec=) is kept.
package timerslack

import "time"

// Slack is the timer slack imapgw runs with.
const Slack = 4 * time.Millisecond

// kernelDefault is every thread's slack unless an ancestor chose another.
const kernelDefault = 50 * time.Microsecond

// reexecEnv marks the image Raise started, so that it never starts another.
const reexecEnv = "IMAPGW_TIMERSLACK_SET"
