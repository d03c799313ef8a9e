package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
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
		Args:  cobra.MinimumNArgs(1),
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
func stopContainer(st *container.State, timeout time.Duration) error {
	if !st.Running() {
		return nil
	}
	c, err := container.Dial(st.Socket)
	if err != nil {
		return err
	}
	defer c.Close()
	waiter, err := container.Dial(st.Socket)
	if err != nil {
		return err
	}
	defer waiter.Close()
	exited := make(chan struct{})
	go func() {
		waiter.Call(context.Background(), agentproto.Request{Op: agentproto.OpWait, Container: st.ID})
		close(exited)
	}()
	c.Call(context.Background(), agentproto.Request{Op: agentproto.OpSignal, Container: st.ID, Signal: int(syscall.SIGTERM)})
	select {
	case <-exited:
	case <-time.After(timeout):
		c.Call(context.Background(), agentproto.Request{Op: agentproto.OpSignal, Container: st.ID, Signal: int(syscall.SIGKILL)})
		<-exited
	}
	// The vessel process records the exit and ends the VM.
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		cur, err := container.Find(filepath.Dir(st.Dir()), st.ID)
		if err != nil || !cur.Running() {
			return nil
		}
	}
	return fmt.Errorf("%s: the container exited but its VM did not end", st.Name)
}

func newRm() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm [-f] CONTAINER...",
		Short: "Remove containers (-f stops running ones with SIGKILL first)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return eachContainer(args, func(st *container.State) error {
				if st.Running() {
					if !force {
						return fmt.Errorf("cannot remove container %s: it is running (stop it first, or use rm -f)", st.Name)
					}
					if err := stopContainer(st, 0); err != nil {
						return err
					}
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
	if _, err := c.Call(context.Background(), agentproto.Request{Op: agentproto.OpExec, Container: st.ID, Exec: execID, Process: &proc,
		User: f.user, IO: &agentproto.ProcessIO{Terminal: f.tty, Stdin: f.interactive}}); err != nil {
		var se *container.StartError
		if errors.As(err, &se) && se.Code != 0 {
			return &exitError{code: se.Code, msg: se.Msg}
		}
		return runErr("%v", err)
	}
	// Signals go to the exec'd process; window changes to its terminal.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGWINCH)
	defer signal.Stop(sigs)
	waiter, err := container.Dial(st.Socket)
	if err != nil {
		return runErr("%v", err)
	}
	defer waiter.Close()
	result := make(chan agentproto.Reply, 1)
	go func() {
		r, _ := waiter.Call(context.Background(), agentproto.Request{Op: agentproto.OpWait, Container: st.ID, Exec: execID})
		result <- r
	}()
	for {
		select {
		case s := <-sigs:
			if req, ok := signalRequest(s, st.ID, execID, f.tty); ok {
				c.Call(context.Background(), req)
			}
		case r := <-result:
			at.wait()
			if r.Error != "" {
				return runErr("%s", r.Error)
			}
			if r.Status != 0 {
				return &exitError{code: r.Status}
			}
			return nil
		}
	}
}
