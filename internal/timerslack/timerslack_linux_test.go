package timerslack

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary a program that calls Raise (see TestMain).
const helperEnv = "TIMERSLACK_TEST_HELPER"

// TestMain, as the helper, prints one "start" line per image it runs as (two
// when Raise executed it again), calls Raise, then prints its PID and the
// slack of every one of its threads.
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "1" {
		os.Exit(m.Run())
	}
	fmt.Println("start")
	if err := Raise(); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	runtime.GC() // a few more threads, created after Raise
	fmt.Println("pid", os.Getpid())
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/" + t.Name() + "/timerslack_ns")
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println("slack", strings.TrimSpace(string(b)))
	}
	if _, ok := os.LookupEnv(reexecEnv); ok {
		fmt.Println("error", reexecEnv, "still set")
	}
	os.Exit(0)
}

// helperRun is what a helper process reported.
type helperRun struct {
	starts, pid int
	slacks      []time.Duration
}

// runHelper starts the helper from a thread whose slack is parentSlack and
// reads its report.
func runHelper(t *testing.T, parentSlack time.Duration) helperRun {
	t.Helper()
	runtime.LockOSThread() // the child inherits the slack of the thread that forks it
	defer runtime.UnlockOSThread()
	before, err := Current()
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(parentSlack), 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(before), 0, 0, 0)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var r helperRun
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		word, arg, _ := strings.Cut(sc.Text(), " ")
		n, _ := strconv.Atoi(arg)
		switch word {
		case "start":
			r.starts++
		case "pid":
			r.pid = n
		case "slack":
			r.slacks = append(r.slacks, time.Duration(n))
		default:
			t.Errorf("helper: %s", sc.Text())
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	if r.pid != cmd.Process.Pid {
		t.Errorf("helper ran as PID %d, started as %d: executing again must keep the PID", r.pid, cmd.Process.Pid)
	}
	return r
}

func TestRaise(t *testing.T) {
	tests := []struct {
		name       string
		parent     time.Duration
		wantStarts int
		want       time.Duration
	}{
		{"kernel default: raised", kernelDefault, 2, Slack},
		{"chosen by the parent: kept", 2 * time.Millisecond, 1, 2 * time.Millisecond},
		{"chosen equal to Slack: kept", Slack, 1, Slack},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runHelper(t, tt.parent)
			if r.starts != tt.wantStarts {
				t.Errorf("the program started %d times, want %d", r.starts, tt.wantStarts)
			}
			if len(r.slacks) < 2 {
				t.Fatalf("helper reported %d threads", len(r.slacks))
			}
			for i, s := range r.slacks {
				if s != tt.want {
					t.Errorf("thread %d of %d: slack %v, want %v", i+1, len(r.slacks), s, tt.want)
				}
			}
		})
	}
}
