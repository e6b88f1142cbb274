package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a proxy running as a child process, in its own process group so that
// stopping it reaches its workers too.
type proc struct {
	cmd  *exec.Cmd
	log  string // its stdout and stderr
	done chan struct{}
	err  error // from Wait, once done is closed
}

// startProc starts name with args, output to logPath. The child dies with us
// (Pdeathsig), so an interrupted bench leaves no proxy behind.
func startProc(logPath, name string, args ...string) (*proc, error) {
	out, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		out.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// waitPort waits until addr accepts connections, failing early if the process exits.
func (p *proc) waitPort(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v): %s", filepath.Base(p.cmd.Path), p.err, p.tail())
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s: %s not listening after %v: %s", filepath.Base(p.cmd.Path), addr, timeout, p.tail())
}

// stop sends sig, then kills the process group if it has not ended in 5 s.
func (p *proc) stop(sig syscall.Signal) error {
	select {
	case <-p.done:
		return fmt.Errorf("%s had exited (%v): %s", filepath.Base(p.cmd.Path), p.err, p.tail())
	default:
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		// The group we created, while its leader still lives (so the id is
		// still ours): the child and its workers.
		syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.done
	}
	return nil
}

// tail is the end of the process's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return strings.TrimSpace(string(b))
}

// usage is what a process tree holds and has spent.
type usage struct {
	rssKB int64         // resident memory, summed over the processes
	cpu   time.Duration // user plus system time, summed
	ctx   int64         // context switches, voluntary or not, of all their threads
}

// treeUsage sums VmRSS and CPU time over root and all its descendants: nginx's
// workers, any process HAProxy forks.
func treeUsage(root int) (usage, error) {
	var u usage
	pids, err := tree(root)
	if err != nil {
		return u, err
	}
	for _, pid := range pids {
		rss, err := vmRSS(pid)
		if err != nil {
			continue // exited between the listing and now
		}
		st, err := readStat(pid)
		if err != nil {
			continue
		}
		u.rssKB += rss
		u.cpu += st.cpu
		u.ctx += ctxSwitches(pid)
	}
	return u, nil
}

// ctxSwitches sums the context switches of every thread of pid.
func ctxSwitches(pid int) int64 {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0
	}
	var n int64
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue // exited meanwhile
		}
		for line := range strings.Lines(string(b)) {
			name, v, _ := strings.Cut(line, ":")
			if name == "voluntary_ctxt_switches" || name == "nonvoluntary_ctxt_switches" {
				c, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				n += c
			}
		}
	}
	return n
}

// tree lists root and its descendants from /proc.
func tree(root int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil {
			children[st.ppid] = append(children[st.ppid], pid)
		}
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out, nil
}

type procStat struct {
	ppid int
	cpu  time.Duration
}

// clockTick is USER_HZ, the unit of /proc/PID/stat times: 100 on Linux.
const clockTick = 10 * time.Millisecond

// readStat parses /proc/PID/stat: the fields after the command name, which is
// in parentheses and may itself hold spaces and parentheses.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("bad /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return procStat{}, errors.New("short /proc stat")
	}
	ppid, _ := strconv.Atoi(f[1])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return procStat{ppid: ppid, cpu: time.Duration(utime+stime) * clockTick}, nil
}

// vmRSS reads VmRSS in kB from /proc/PID/status.
func vmRSS(pid int) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, errors.New("no VmRSS")
}

// raiseFileLimit lifts RLIMIT_NOFILE as far as the kernel allows (we are root:
// the hard limit too), for this process and the proxies it starts.
func raiseFileLimit(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur >= want {
		return lim.Cur, nil
	}
	next := syscall.Rlimit{Cur: want, Max: max(lim.Max, want)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next); err != nil {
		// Not root: take what the hard limit allows.
		next = syscall.Rlimit{Cur: lim.Max, Max: lim.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next); err != nil {
			return lim.Cur, err
		}
	}
	return next.Cur, nil
}

// freePort returns a loopback port nobody listens on now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// machineBusy reads the CPU time all processes spent, from the first line of
// /proc/stat (everything but idle and iowait).
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, errors.New("bad /proc/stat")
	}
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return time.Duration(busy) * clockTick, nil
}
