package main

import (
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sync"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// reaper collects every exited child of the agent, which is a child
// subreaper: the runc commands it starts, and the container processes
// that runc leaves behind (reparented to the agent when runc exits). It
// is go-runc's ProcessMonitor, so go-runc's commands and the reaper do
// not race for the same exit: a command starts under the reaper's lock
// and is registered before any SIGCHLD can be handled.
type reaper struct {
	mu      sync.Mutex
	waiters map[int]chan runc.Exit
	// unclaimed keeps exits nobody waited for yet (a process that ended
	// before watch was called for it), at most maxUnclaimed of them.
	unclaimed map[int]runc.Exit
}

const maxUnclaimed = 1024

func newReaper() *reaper {
	r := &reaper{waiters: map[int]chan runc.Exit{}, unclaimed: map[int]runc.Exit{}}
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD)
	go func() {
		for range sigs {
			r.reap()
		}
	}()
	return r
}

// reap collects all exited children.
func (r *reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
		e := runc.Exit{Timestamp: time.Now(), Pid: pid, Status: exitStatus(ws)}
		if ch, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			ch <- e
			continue
		}
		if len(r.unclaimed) >= maxUnclaimed {
			for p := range r.unclaimed {
				delete(r.unclaimed, p)
				break
			}
		}
		r.unclaimed[pid] = e
	}
}

// exitStatus is the shell's view of a wait status: the exit code, or
// 128+N for a process that signal N killed.
func exitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// watch returns a channel that receives pid's exit, which may already
// have happened.
func (r *reaper) watch(pid int) chan runc.Exit {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch := make(chan runc.Exit, 1)
	if e, ok := r.unclaimed[pid]; ok {
		delete(r.unclaimed, pid)
		ch <- e
		return ch
	}
	r.waiters[pid] = ch
	return ch
}

// Start implements runc.ProcessMonitor.
func (r *reaper) Start(c *exec.Cmd) (chan runc.Exit, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := c.Start(); err != nil {
		return nil, err
	}
	ch := make(chan runc.Exit, 1)
	r.waiters[c.Process.Pid] = ch
	return ch, nil
}

// StartLocked implements runc.ProcessMonitor: Start on a locked thread.
func (r *reaper) StartLocked(c *exec.Cmd) (chan runc.Exit, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return r.Start(c)
}

// Wait implements runc.ProcessMonitor. The reaper has collected the
// process; c.Wait (which then fails to wait) still lets exec's copying
// goroutines finish, so the command's captured output is complete.
func (r *reaper) Wait(c *exec.Cmd, ch chan runc.Exit) (int, error) {
	e := <-ch
	c.Wait()
	return e.Status, nil
}
