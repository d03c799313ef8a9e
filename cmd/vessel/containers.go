package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/guest/agentproto"
)

// exitContainer is the status of ps, logs, stop and rm when they fail
// (no such container, one still running), as docker's.
const exitContainer = 1

func containerErr(format string, args ...any) error {
	return &exitError{code: exitContainer, msg: fmt.Sprintf(format, args...)}
}

// findContainer looks a container up by name or ID prefix.
func findContainer(ref string) (*container.State, error) {
	root, err := container.StateRoot()
	if err != nil {
		return nil, containerErr("%v", err)
	}
	st, err := container.Find(root, ref)
	if err != nil {
		return nil, containerErr("%v", err)
	}
	return st, nil
}

func newPs() *cobra.Command {
	var all, quiet bool
	cmd := &cobra.Command{
		Use:   "ps [-a] [-q]",
		Short: "List containers (running ones; -a for all)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			root, err := container.StateRoot()
			if err != nil {
				return containerErr("%v", err)
			}
			reapOrphans(root)
			l, err := container.List(root)
			if err != nil {
				return containerErr("%v", err)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 8, 3, ' ', 0)
			if !quiet {
				fmt.Fprintln(w, "CONTAINER ID\tIMAGE\tCOMMAND\tCREATED\tSTATUS\tNAMES")
			}
			for _, st := range l {
				running := st.Running()
				if !running && !all {
					continue
				}
				if quiet {
					fmt.Fprintln(w, st.ShortID())
					continue
				}
				status := "Up " + ago(st.Created)
				switch {
				case running:
				case st.Status == container.StatusExited:
					status = fmt.Sprintf("Exited (%d) %s ago", st.ExitCode, ago(st.Finished))
				case st.Status == container.StatusRunning:
					status = "Exited (vessel process gone)"
				default:
					status = "Created"
				}
				cmdline := strings.Join(st.Command, " ")
				if len(cmdline) > 30 {
					cmdline = cmdline[:29] + "…"
				}
				fmt.Fprintf(w, "%s\t%s\t%q\t%s ago\t%s\t%s\n", st.ShortID(), st.Image, cmdline, ago(st.Created), status, st.Name)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "show all containers, not only running ones")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the short IDs")
	return cmd
}

// ago says how long ago t was, coarsely.
func ago(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d seconds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d minutes", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d hours", int(d.Hours()))
	}
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}

func newLogs() *cobra.Command {
	return &cobra.Command{
		Use:   "logs CONTAINER",
		Short: "Print a container's output so far (stdout and stderr to each)",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			st, err := findContainer(args[0])
			if err != nil {
				return err
			}
			if err := container.CopyLog(st.LogPath(), os.Stdout, os.Stderr); err != nil {
				return containerErr("%v", err)
			}
			return nil
		},
	}
}

// eachContainer applies f to the containers refs name, as docker's stop
// and rm: each success prints the name given, each failure one line, and
// any failure makes the status 1.
func eachContainer(refs []string, f func(*container.State) error) error {
	var failed error
	for _, ref := range refs {
		st, err := findContainer(ref)
		if err == nil {
			err = f(st)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "vessel: %v\n", err)
			failed = &exitError{code: exitContainer}
			continue
		}
		fmt.Println(ref)
	}
	return failed
}

func newStop() *cobra.Command {
	var timeout int
	cmd := &cobra.Command{
		Use:   "stop [-t SECONDS] CONTAINER...",
		Short: "Stop running containers: SIGTERM, then SIGKILL after the timeout",
		Long: `Stop running containers: SIGTERM to the container's process, then SIGKILL
after the timeout. A container whose guest does not report the exit a
minute after SIGKILL, or whose VM does not end a minute after the exit,
has its vessel process killed (the VM goes with it; the exit is recorded
as 137).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return eachContainer(args, func(st *container.State) error {
				return stopContainer(st, time.Duration(timeout)*time.Second)
			})
		},
	}
	cmd.Flags().IntVarP(&timeout, "time", "t", 10, "seconds to wait for the container to exit before SIGKILL")
	return cmd
}

// stopContainer sends SIGTERM to a running container's process, SIGKILL
// after timeout, and waits until its vessel process recorded the exit.
// A guest that does not answer in time, or a vessel process that does
// not end the VM, gets its vessel process killed.
func stopContainer(st *container.State, timeout time.Duration) error {
	return stopBounded(st, timeout, defaultStopBounds)
}

// stopBounds bound stop's waits after SIGKILL: for the guest to report
// the exit (kill), then for the vessel process to record it and end the
// VM (end).
type stopBounds struct{ kill, end time.Duration }

// defaultStopBounds are generous, for the slowest emulated platforms.
var defaultStopBounds = stopBounds{kill: time.Minute, end: time.Minute}

// stopBounded is stopContainer with the bounds b.
func stopBounded(st *container.State, timeout time.Duration, b stopBounds) error {
	switch {
	case st.Running():
		if err := signalStop(st, timeout, b.kill); err != nil {
			return killVessel(st, err.Error())
		}
	case st.Status != container.StatusExited:
		return nil // not started: nothing to stop
	}
	return awaitOwner(st, b.end)
}

// awaitOwner waits until the vessel process that owns st has ended: once
// it recorded the exit it still ends the VM (shutting a guest with a
// scratch disk down), removes the scratch disk and saves the state, so
// a stop that returned before would let an rm race with it (the state
// directory refilled while it is removed). One that has not ended
// within d is killed.
func awaitOwner(st *container.State, d time.Duration) error {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		cur, err := st.Reload()
		if err != nil || !cur.OwnerAlive() {
			return nil
		}
	}
	return killVessel(st, "the container exited but its VM did not end")
}

// signalStop sends SIGTERM to the container's process and SIGKILL after
// timeout, each on a connection of its own (the guest may never answer
// the first), and returns once the guest reported the process's exit, or
// an error when it did not within kill after SIGKILL.
func signalStop(st *container.State, timeout, kill time.Duration) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiter, err := container.Dial(st.Socket)
	if err != nil {
		return err
	}
	defer waiter.Close()
	exited := make(chan struct{})
	go func() {
		waiter.Wait(ctx, st.ID, "") // an error too means there is nothing left to wait for
		close(exited)
	}()
	send := func(sig syscall.Signal) {
		c, err := container.Dial(st.Socket)
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.Call(ctx, agentproto.Request{Op: agentproto.OpSignal, Container: st.ID, Signal: int(sig)})
		}()
	}
	send(syscall.SIGTERM)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-exited:
		return nil
	case <-t.C:
	}
	send(syscall.SIGKILL)
	t.Reset(kill)
	select {
	case <-exited:
		return nil
	case <-t.C:
		return fmt.Errorf("the guest did not report the container's exit %v after SIGKILL", kill)
	}
}

// killVessel ends a container whose guest or vessel process does not
// answer (why says how): SIGKILL to the vessel process that runs its VM
// (the VM goes with it), then what that process would have done at its
// end: the exit recorded (137), its private directory removed, and the
// container removed if it was run with --rm.
func killVessel(st *container.State, why string) error {
	cur, err := st.Reload()
	switch {
	case err != nil:
		return nil // removed meanwhile
	case cur.OwnerAlive():
	case cur.Running(): // its PID runs another program
		return fmt.Errorf("%s: %s, and its process %d is not a vessel process to kill", st.Name, why, cur.Pid)
	default:
		return nil // it ended meanwhile
	}
	if cur.PidNS != container.PidNamespace() {
		// Its PID means another process here.
		return fmt.Errorf("%s: %s, and its vessel process runs in another PID namespace (%s): end it there", st.Name, why, cur.PidNS)
	}
	fmt.Fprintf(os.Stderr, "vessel: %s: %s: killing its vessel process %d\n", st.Name, why, cur.Pid)
	// Until the owner lock is free: the state names the owner's PID,
	// which `vessel run -d` hands from itself to the process it starts,
	// so it is read again after each kill.
	for deadline := time.Now().Add(5 * time.Second); cur.OwnerAlive(); {
		if container.RunsThisProgram(cur.Pid) {
			if err := syscall.Kill(cur.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("%s: kill its vessel process %d: %w", st.Name, cur.Pid, err)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s, and its vessel process %d did not end when killed", st.Name, why, cur.Pid)
		}
		time.Sleep(20 * time.Millisecond)
		if cur, err = st.Reload(); err != nil {
			return nil // removed meanwhile
		}
	}
	if dir := filepath.Dir(cur.Socket); strings.HasPrefix(filepath.Base(dir), container.RunDirPrefix) {
		os.RemoveAll(dir)
	}
	removeJail(cur.ID)
	return cur.Reap()
}

// reapOrphans finishes with the containers under root whose vessel
// process was killed (SIGKILL) before it could (container.Orphaned):
// those run with --rm are removed, the others' scratch disks, private
// directories and jails go and their exit is recorded; so does what a
// killed rm left (container.SweepRemovals). vessel run and ps call it,
// so that a killed run leaves nothing behind for long.
// Failures are reported, not returned: they are not the command's.
func reapOrphans(root string) {
	container.SweepRemovals(root)
	l, err := container.List(root)
	if err != nil {
		return
	}
	for _, st := range l {
		if !st.Orphaned() {
			continue
		}
		// Its owner may have finished with it (or a detached run's
		// child taken it over) since it was listed.
		if st, err = st.Reload(); err != nil || !st.Orphaned() {
			continue
		}
		removeJail(st.ID)
		if err := st.Reap(); err != nil {
			fmt.Fprintf(os.Stderr, "vessel: clean up after the killed container %s: %v\n", st.ShortID(), err)
		}
	}
}

func newRm() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm [-f] CONTAINER...",
		Short: "Remove containers (-f stops running ones with SIGKILL first)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return eachContainer(args, func(st *container.State) error {
				starting := st.Status == container.StatusCreated && st.OwnerAlive()
				switch {
				case starting && !force:
					return fmt.Errorf("cannot remove container %s: it is starting (use rm -f)", st.Name)
				case st.Running() && !force:
					return fmt.Errorf("cannot remove container %s: it is running (stop it first, or use rm -f)", st.Name)
				case starting:
					if err := killVessel(st, "removed while it started"); err != nil {
						return err
					}
				default:
					// An exited container's vessel process may still
					// be finishing with it: stop waits for that too.
					if err := stopContainer(st, 0); err != nil {
						return err
					}
				}
				removeJail(st.ID) // left if its vessel process was killed
				if cur, err := st.Reload(); err == nil {
					st = cur // as its owner left it
				} else if errors.Is(err, fs.ErrNotExist) {
					return nil // run with --rm: its owner removed it
				}
				return st.Delete()
			})
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill a running container first")
	return cmd
}

type execFlags struct {
	interactive, tty bool
	env              []string
	workdir, user    string
}

func newExec() *cobra.Command {
	var f execFlags
	cmd := &cobra.Command{
		Use:   "exec [flags] CONTAINER COMMAND [ARG...]",
		Short: "Run a command in a running container",
		Long: `Run a command in a running container, as docker exec: with the
container's environment (plus -e), working directory (or -w) and user
(or -u). Exits with the command's status; 125 when vessel fails, 126 and
127 when the command cannot be run or was not found.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) < 2 {
				return runErr("\"vessel exec\" requires at least 2 arguments: CONTAINER COMMAND [ARG...]")
			}
			return containerExec(f, args[0], args[1:])
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return runErr("%v", err) })
	fl := cmd.Flags()
	fl.SetInterspersed(false)
	fl.BoolVarP(&f.interactive, "interactive", "i", false, "pass stdin to the command")
	fl.BoolVarP(&f.tty, "tty", "t", false, "give the command a terminal")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable: KEY=VALUE, or KEY to pass the host's value (repeatable)")
	fl.StringVarP(&f.workdir, "workdir", "w", "", "working directory inside the container")
	fl.StringVarP(&f.user, "user", "u", "", "user[:group] to run as, names or numeric IDs")
	return cmd
}

func containerExec(f execFlags, ref string, argv []string) error {
	root, err := container.StateRoot()
	if err != nil {
		return runErr("%v", err)
	}
	st, err := container.Find(root, ref)
	if err != nil {
		return runErr("%v", err)
	}
	if !st.Running() {
		return runErr("container %s is not running", ref)
	}
	if f.workdir != "" && !strings.HasPrefix(f.workdir, "/") {
		return runErr("the working directory %q is not an absolute path", f.workdir)
	}
	proc := specs.Process{Args: argv, Terminal: f.tty, Cwd: "/"}
	if st.Process != nil {
		proc.Env = append(proc.Env, st.Process.Env...)
		proc.Cwd = st.Process.Cwd
		proc.Capabilities = st.Process.Capabilities
		proc.Rlimits = st.Process.Rlimits
	}
	env, err := container.ExpandEnv(f.env)
	if err != nil {
		return runErr("%v", err)
	}
	proc.Env = container.OverrideEnv(proc.Env, env)
	if f.workdir != "" {
		proc.Cwd = f.workdir
	}
	if f.tty {
		if w, h, err := term.GetSize(int(os.Stdout.Fd())); err == nil {
			proc.ConsoleSize = &specs.Box{Width: uint(w), Height: uint(h)}
		}
	}
	// Signals: before the process runs, a terminating one ends vessel
	// exec; then they go to the process, and the forceSignals-th
	// terminating one ends vessel exec without waiting for the guest.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGWINCH)
	defer signal.Stop(sigs)
	c, err := container.Dial(st.Socket)
	if err != nil {
		return runErr("%v", err)
	}
	defer c.Close()
	var b [6]byte
	rand.Read(b[:])
	execID := "exec" + hex.EncodeToString(b[:])
	sid := func(name string) agentproto.StreamID {
		return agentproto.StreamID{Container: st.ID, Exec: execID, Name: name}
	}
	// The streams first: the agent dials its ends while it starts the
	// process, and the control socket joins them.
	at, err := attach(func(name string) (net.Conn, error) { return c.Stream(sid(name)) }, f.tty, f.interactive, os.Stdout, os.Stderr)
	if err != nil {
		return runErr("%v", err)
	}
	defer at.close()
	execd := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), container.RequestTimeout)
		defer cancel()
		_, err := c.Call(ctx, agentproto.Request{Op: agentproto.OpExec, Container: st.ID, Exec: execID, Process: &proc,
			User: f.user, IO: &agentproto.ProcessIO{Terminal: f.tty, Stdin: f.interactive}})
		execd <- err
	}()
	for running := false; !running; {
		select {
		case s := <-sigs:
			if s != syscall.SIGWINCH {
				return &exitError{code: 128 + int(s.(syscall.Signal))}
			}
		case err := <-execd:
			if err != nil {
				var se *container.StartError
				if errors.As(err, &se) && se.Code != 0 {
					return &exitError{code: se.Code, msg: se.Msg}
				}
				if errors.Is(err, context.DeadlineExceeded) {
					return runErr("exec: the guest did not answer within %v", container.RequestTimeout)
				}
				return runErr("%v", err)
			}
			running = true
		}
	}
	waiter, err := container.Dial(st.Socket)
	if err != nil {
		return runErr("%v", err)
	}
	defer waiter.Close()
	type exit struct {
		status int
		err    error
	}
	result := make(chan exit, 1)
	go func() {
		status, err := waiter.Wait(context.Background(), st.ID, execID)
		result <- exit{status, err}
	}()
	// Requests go one at a time on c, each bounded; one that finds the
	// queue full is dropped.
	fwd := make(chan agentproto.Request, 8)
	defer close(fwd)
	go func() {
		for req := range fwd {
			ctx, cancel := context.WithTimeout(context.Background(), container.RequestTimeout)
			c.Call(ctx, req)
			cancel()
		}
	}()
	terminating := 0
	for {
		select {
		case s := <-sigs:
			switch s {
			case syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP:
				if terminating++; terminating == forceSignals {
					return &exitError{code: 128 + int(s.(syscall.Signal)), msg: fmt.Sprintf("%s %d times: leaving the process", s, forceSignals)}
				}
			}
			if req, ok := signalRequest(s, st.ID, execID, f.tty); ok {
				select {
				case fwd <- req:
				default:
				}
			}
		case r := <-result:
			if r.err != nil {
				return runErr("%v", r.err)
			}
			if err := drainExec(at, sigs); err != nil {
				return err
			}
			if r.status != 0 {
				return &exitError{code: r.status}
			}
			return nil
		}
	}
}

// drainExec waits for an exec'd process's output after its exit, for at
// most drainTimeout; a terminating signal meanwhile ends the wait.
func drainExec(at *attached, sigs <-chan os.Signal) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- at.drain(ctx, drainTimeout) }()
	for {
		select {
		case s := <-sigs:
			if s != syscall.SIGWINCH {
				return &exitError{code: 128 + int(s.(syscall.Signal))}
			}
		case err := <-errc:
			if err != nil {
				return runErr("%v", err)
			}
			return nil
		}
	}
}
