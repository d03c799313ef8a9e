package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/guest/agentproto"
	"github.com/vesselvm/vessel/internal/fdpass"
)

// exec runs another process in a container, to runc's contract: without
// --detach, vessel-runtime streams its own stdio to the process and
// exits with the process's status; with it (containerd's shim always
// uses `exec --detach --pid-file P --process F`), the PID written is an
// exec helper: a vessel-runtime process in a session of its own that
// holds the caller's stdio (or, with a terminal, the host pty's slave),
// forwards the signals it gets to the process, and exits with the
// process's status (128+N for signal N), as the process itself would
// under runc. A helper killed with SIGKILL takes the process with it.
//
// Both talk to the container's VMM process on one control connection:
// it has the agent start the process (OpExec), sends the process's
// streams' connections back with the reply (SCM_RIGHTS), so that the
// copying is the exec'd side's own, and later the exit status.

// Control operations of exec, resize and ps.
const (
	opExec   = "exec"
	opResize = "resize"
)

// execReply is the VMM's answer on an exec connection: first the
// started process (its streams' descriptors come with it) or an error,
// then its exit.
type execReply struct {
	Error  string `json:"error,omitempty"`
	Exec   string `json:"exec,omitempty"`
	Pid    int    `json:"pid,omitempty"`
	Exited bool   `json:"exited,omitempty"`
	Status int    `json:"status,omitempty"`
}

// maxPid is Linux's PID_MAX_LIMIT: a guest's PID above it is a lie.
const maxPid = 1 << 22

// killedStatus is an exec'd process's status when it ended with its VM
// (the container exited): SIGKILL's, as under runc.
const killedStatus = 128 + int(syscall.SIGKILL)

// codedError is a failure with an exit status other than 1: runc's exec
// exits 255 when the process cannot be started.
type codedError struct {
	msg  string
	code int
}

func (e *codedError) Error() string { return e.msg }

func execFailed(err error) error {
	return &codedError{msg: "exec failed: " + err.Error(), code: 255}
}

// execFlags are exec's, runc's.
type execFlags struct {
	process, pidFile, consoleSocket, cwd, user, apparmor, processLabel string
	detach, tty, noNewPrivs                                            bool
	env, caps                                                          []string
	additionalGids                                                     []int64
	preserveFDs                                                        int
}

func newExec(g *globals) *cobra.Command {
	var f execFlags
	c := &cobra.Command{
		Use:   "exec [flags] ID [COMMAND [ARG...]]",
		Short: "run another process in a container (its command line, or --process)",
		Args:  execArgs(&f),
		RunE: func(c *cobra.Command, args []string) error {
			return g.exec(c, args[0], args[1:], f)
		},
	}
	addExecFlags(c, &f)
	return c
}

// execArgs checks exec's arguments: the ID, and the command unless
// --process gives the process.
func execArgs(f *execFlags) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if f.process != "" && len(args) != 1 {
			return errorf("want the container ID only with --process (got %d arguments)", len(args))
		}
		if f.process == "" && len(args) < 2 {
			return errorf("want the container ID and a command (or --process)")
		}
		return nil
	}
}

// addExecFlags defines exec's flags, runc's.
func addExecFlags(c *cobra.Command, f *execFlags) {
	c.Flags().SetInterspersed(false) // the command's own flags follow the ID
	fl := c.Flags()
	fl.StringVarP(&f.process, "process", "p", "", "a JSON file of the process (runtime-spec's process); the other process flags are ignored")
	fl.BoolVarP(&f.detach, "detach", "d", false, "return once the process has started; the PID in --pid-file exits with its status")
	fl.StringVar(&f.pidFile, "pid-file", "", "write the PID of the process's holder (vessel-runtime, or the exec helper with --detach) to this file")
	fl.StringVar(&f.consoleSocket, "console-socket", "", "a Unix socket to send the terminal's master to (with --detach and a terminal)")
	fl.BoolVarP(&f.tty, "tty", "t", false, "give the process a terminal")
	fl.StringVar(&f.cwd, "cwd", "", "the working directory in the container")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "an environment variable, K=V (repeatable)")
	fl.StringVarP(&f.user, "user", "u", "", "UID[:GID] to run the process as")
	fl.Int64SliceVarP(&f.additionalGids, "additional-gids", "g", nil, "additional group IDs (repeatable)")
	fl.StringArrayVarP(&f.caps, "cap", "c", nil, "add a capability (repeatable)")
	fl.BoolVar(&f.noNewPrivs, "no-new-privs", false, "set no_new_privs for the process")
	fl.IntVar(&f.preserveFDs, "preserve-fds", 0, "extra file descriptors to pass (0 only: the process runs in a VM)")
	fl.StringVarP(&f.apparmor, "apparmor", "a", "", "the AppArmor profile of the process")
	fl.StringVar(&f.processLabel, "process-label", "", "the SELinux label of the process")
}

// execProcess builds the process to run: the --process file's, or the
// container's own process with the command line and the flags, as
// runc's getProcess.
func execProcess(f execFlags, argv []string, base *specs.Process, changed func(string) bool) (*specs.Process, error) {
	if f.process != "" {
		b, err := readBounded(f.process, maxCtl)
		if err != nil {
			return nil, fmt.Errorf("--process: %w", err)
		}
		var p specs.Process
		if err := json.Unmarshal(b, &p); err != nil {
			return nil, fmt.Errorf("--process %s: %w", f.process, err)
		}
		return &p, checkProcess(&p)
	}
	p := specs.Process{Cwd: "/"}
	if base != nil {
		p = *base
		p.Env = append([]string(nil), base.Env...)
		if base.Capabilities != nil {
			caps := *base.Capabilities
			p.Capabilities = &caps
		}
		p.User.AdditionalGids = append([]uint32(nil), base.User.AdditionalGids...)
	}
	p.Args = argv
	p.ConsoleSize = nil
	if f.cwd != "" {
		p.Cwd = f.cwd
	}
	if f.apparmor != "" {
		p.ApparmorProfile = f.apparmor
	}
	if f.processLabel != "" {
		p.SelinuxLabel = f.processLabel
	}
	if len(f.caps) > 0 {
		if p.Capabilities == nil {
			p.Capabilities = &specs.LinuxCapabilities{}
		}
		c := p.Capabilities
		c.Bounding = append(c.Bounding[:len(c.Bounding):len(c.Bounding)], f.caps...)
		c.Effective = append(c.Effective[:len(c.Effective):len(c.Effective)], f.caps...)
		c.Permitted = append(c.Permitted[:len(c.Permitted):len(c.Permitted)], f.caps...)
	}
	p.Env = append(p.Env, f.env...)
	p.Terminal = f.tty
	if changed("no-new-privs") {
		p.NoNewPrivileges = f.noNewPrivs
	}
	if f.user != "" {
		u, gr, hasGroup := strings.Cut(f.user, ":")
		uid, err := strconv.ParseUint(u, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("parsing %s as int for uid failed: %w", u, err)
		}
		p.User.UID = uint32(uid)
		if hasGroup {
			gid, err := strconv.ParseUint(gr, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("parsing %s as int for gid failed: %w", gr, err)
			}
			p.User.GID = uint32(gid)
		}
	}
	for _, g := range f.additionalGids {
		if g < 0 || g > 1<<32-1 {
			return nil, fmt.Errorf("additional gid %d: out of range", g)
		}
		p.User.AdditionalGids = append(p.User.AdditionalGids, uint32(g))
	}
	return &p, checkProcess(&p)
}

// checkProcess is runc's validation of a process.
func checkProcess(p *specs.Process) error {
	if len(p.Args) == 0 {
		return errors.New("args must not be empty")
	}
	if p.Cwd == "" {
		return errors.New("cwd property must not be empty")
	}
	if !filepath.IsAbs(p.Cwd) {
		return errors.New("cwd must be an absolute path")
	}
	return nil
}

// readBounded reads a file of at most max bytes.
func readBounded(path string, max int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}

// bundleProcess is the process of the container's config.json, which
// exec's flags start from.
func bundleProcess(bundleDir string) (*specs.Process, error) {
	b, err := readBounded(filepath.Join(bundleDir, "config.json"), maxConfig)
	if err != nil {
		return nil, err
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(bundleDir, "config.json"), err)
	}
	return s.Process, nil
}

// exec is the exec command.
func (g *globals) exec(c *cobra.Command, id string, argv []string, f execFlags) error {
	if f.preserveFDs != 0 {
		return errorf("--preserve-fds %d: passing extra file descriptors is not supported by vessel-runtime", f.preserveFDs)
	}
	dir, rec, err := g.load(id)
	if err != nil {
		return execFailed(err)
	}
	var base *specs.Process
	if f.process == "" {
		if base, err = bundleProcess(rec.Bundle); err != nil {
			return execFailed(err)
		}
	}
	proc, err := execProcess(f, argv, base, c.Flags().Changed)
	if err != nil {
		return execFailed(err)
	}
	if err := checkTerminal(proc.Terminal, f.detach, f.consoleSocket); err != nil {
		return execFailed(err)
	}
	switch st := rec.status(dir); st {
	case statusCreated, statusRunning:
	case statusStopped:
		return execFailed(errors.New("cannot exec in a stopped container"))
	default:
		return execFailed(fmt.Errorf("cannot exec in a container that is %s", st))
	}
	if f.pidFile != "" {
		if f.pidFile, err = filepath.Abs(f.pidFile); err != nil {
			return errorf("--pid-file: %v", err)
		}
	}
	if f.detach {
		return g.execDetached(id, proc, f)
	}
	// Without --detach this process is the holder.
	if f.pidFile != "" {
		if err := writePidFile(f.pidFile, os.Getpid()); err != nil {
			return execFailed(fmt.Errorf("--pid-file: %w", err))
		}
	}
	sio := execIO{in: os.Stdin, out: os.Stdout, errOut: os.Stderr, ttyFd: -1}
	if proc.Terminal {
		for _, fd := range []int{int(os.Stdin.Fd()), int(os.Stdout.Fd())} {
			if term.IsTerminal(fd) {
				sio.ttyFd = fd
				proc.ConsoleSize, _ = winSize(fd)
				break
			}
		}
		if in := int(os.Stdin.Fd()); term.IsTerminal(in) {
			if old, err := term.MakeRaw(in); err == nil {
				defer term.Restore(in, old)
			}
		}
	}
	tdir, target := g.execTarget(id, dir)
	status, err := execClient(tdir, target, proc, sio, func(error) {})
	if err != nil {
		return execFailed(err)
	}
	return exitCode(status)
}

// execDetached starts the exec helper and returns once the process runs:
// the helper's PID goes to --pid-file, the terminal's master to the
// console socket.
func (g *globals) execDetached(id string, proc *specs.Process, f execFlags) (err error) {
	var sock *net.UnixConn
	var pty *hostPty
	defer func() {
		pty.close()
		if sock != nil {
			sock.Close()
		}
	}()
	if proc.Terminal {
		if sock, err = dialConsole(f.consoleSocket); err != nil {
			return execFailed(err)
		}
		if pty, err = newHostPty(proc.ConsoleSize); err != nil {
			return execFailed(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return execFailed(err)
	}
	b, err := json.Marshal(proc)
	if err != nil {
		return execFailed(err)
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return execFailed(err)
	}
	defer readyR.Close()
	procR, procW, err := os.Pipe()
	if err != nil {
		readyW.Close()
		return execFailed(err)
	}
	cmd := exec.Command(self, append(g.args(), "exec-helper", id)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{readyW, procR} // execReadyFD, execProcFD
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if pty != nil {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = pty.slave, pty.slave, pty.slave
		cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, 0
	}
	err = cmd.Start()
	readyW.Close()
	procR.Close()
	if pty != nil {
		pty.slave.Close()
		pty.slave = nil
	}
	if err != nil {
		procW.Close()
		return execFailed(fmt.Errorf("start the exec helper: %w", err))
	}
	go func() {
		procW.Write(b)
		procW.Close()
	}()
	line, _ := bufio.NewReader(io.LimitReader(readyR, maxCtl)).ReadString('\n')
	line = strings.TrimSpace(line)
	if line != "ok" {
		cmd.Process.Kill()
		cmd.Wait()
		if line == "" {
			line = "the exec helper ended before the process started"
		}
		return execFailed(errors.New(line))
	}
	if f.pidFile != "" {
		if err := writePidFile(f.pidFile, cmd.Process.Pid); err != nil {
			cmd.Process.Kill() // the VMM process kills the exec'd process when the helper goes
			cmd.Wait()
			return execFailed(fmt.Errorf("--pid-file: %w", err))
		}
	}
	if sock != nil {
		err := sendConsole(sock, pty)
		sock = nil
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return execFailed(err)
		}
	}
	cmd.Process.Release()
	return nil
}

// Descriptors of the exec helper besides its stdio.
const (
	execReadyFD = 3 // "ok" once the process runs, or one line saying why not
	execProcFD  = 4 // the process as JSON
)

func newExecHelper(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "exec-helper ID",
		Short:  "the holder of a detached exec'd process (started by exec --detach)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			signal.Ignore(syscall.SIGPIPE)
			ready := os.NewFile(execReadyFD, "ready")
			procf := os.NewFile(execProcFD, "process")
			b, err := io.ReadAll(io.LimitReader(procf, maxCtl+1))
			procf.Close()
			var proc specs.Process
			if err == nil {
				err = json.Unmarshal(b, &proc)
			}
			if err != nil {
				fmt.Fprintf(ready, "the process from exec: %v\n", err)
				return exitCode(1)
			}
			// The helper outlives exec: it keeps no directory busy.
			os.Chdir("/")
			dir, target := g.execTarget(args[0], filepath.Join(g.root, args[0]))
			sio := execIO{in: os.Stdin, out: os.Stdout, errOut: os.Stderr, ttyFd: -1}
			if proc.Terminal {
				sio.ttyFd = 0
			}
			status, err := execClient(dir, target, &proc, sio, func(err error) {
				if err != nil {
					fmt.Fprintln(ready, strings.ReplaceAll(err.Error(), "\n", " "))
				} else {
					fmt.Fprintln(ready, "ok")
				}
				ready.Close()
			})
			if err != nil {
				logError(g.log, g.logFormat, "exec: "+err.Error(), time.Now())
				return exitCode(255)
			}
			return exitCode(status)
		},
	}
}

// execIO is the stdio an exec'd process gets: with a terminal, in and
// out are the terminal and ttyFd (if not -1) is the one whose size the
// process's terminal follows.
type execIO struct {
	in, out, errOut *os.File
	ttyFd           int
}

// drainTimeout bounds the wait for an exec'd process's last output
// after its exit (the agent reports an exit once the output is sent).
const drainTimeout = 10 * time.Second

// execClient runs proc in the container of the VMM in dir with sio as
// its stdio, forwards the signals it gets (SIGWINCH as a resize), and
// returns the process's status. started is called once: with nil once
// the process runs, or with the error that kept it from running.
func execClient(dir, target string, proc *specs.Process, sio execIO, started func(error)) (status int, err error) {
	isStarted := false
	defer func() {
		if !isStarted {
			started(err)
		}
	}()
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs)
	defer signal.Stop(sigs)

	path, err := sockPath(dir, ctlSock)
	if err != nil {
		return 0, fmt.Errorf("the container's VMM: %w", err)
	}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return 0, fmt.Errorf("the container's VMM: %w", err)
	}
	defer c.Close()
	if err := json.NewEncoder(c).Encode(ctlRequest{Op: opExec, Container: target, Process: proc}); err != nil {
		return 0, fmt.Errorf("the container's VMM: %w", err)
	}
	first, files, err := fdpass.Recv(c, maxCtl, 3)
	if err != nil {
		return 0, fmt.Errorf("the container's VMM: %w", err)
	}
	dec := json.NewDecoder(io.MultiReader(bytes.NewReader(first), io.LimitReader(c, maxCtl)))
	var rep execReply
	if err := dec.Decode(&rep); err != nil {
		fdpass.Close(files)
		return 0, fmt.Errorf("the container's VMM: %w", err)
	}
	if rep.Error != "" {
		fdpass.Close(files)
		return 0, errors.New(rep.Error)
	}
	want := 3
	if proc.Terminal {
		want = 1
	}
	conns, err := fileConns(files, want)
	if err != nil {
		return 0, fmt.Errorf("the container's VMM: %w", err)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	isStarted = true
	started(nil)

	var out sync.WaitGroup
	copyOut := func(w io.Writer, r net.Conn) {
		out.Add(1)
		go func() {
			defer out.Done()
			io.Copy(w, r)
		}()
	}
	if proc.Terminal {
		go io.Copy(conns[0], sio.in)
		copyOut(sio.out, conns[0])
	} else {
		go func() {
			io.Copy(conns[0], sio.in)
			conns[0].(*net.UnixConn).CloseWrite() // EOF for the process
		}()
		copyOut(sio.out, conns[1])
		copyOut(sio.errOut, conns[2])
	}

	// Signals go to the process one at a time, in order.
	fwd := make(chan ctlRequest, 64)
	defer close(fwd)
	go func() {
		for req := range fwd {
			call(dir, req)
		}
	}()
	resize := func() {
		if sio.ttyFd < 0 {
			return
		}
		if box, ok := winSize(sio.ttyFd); ok {
			select {
			case fwd <- ctlRequest{Op: opResize, Exec: rep.Exec, Size: box}:
			default:
			}
		}
	}
	resize()
	exited := make(chan execReply, 1)
	go func() {
		var e execReply
		if err := dec.Decode(&e); err != nil || !e.Exited {
			// The VMM went: the VM ended, and the process with it.
			e = execReply{Exited: true, Status: killedStatus}
		}
		exited <- e
	}()
	for {
		select {
		case s := <-sigs:
			sig, ok := s.(syscall.Signal)
			switch {
			case !ok, sig == syscall.SIGCHLD, sig == syscall.SIGURG, sig == syscall.SIGPIPE:
			case sig == syscall.SIGWINCH:
				resize()
			default:
				select {
				case fwd <- ctlRequest{Op: opKill, Exec: rep.Exec, Signal: int(sig)}:
				default:
				}
			}
		case e := <-exited:
			drained := make(chan struct{})
			go func() {
				out.Wait()
				close(drained)
			}()
			select {
			case <-drained:
			case <-time.After(drainTimeout):
			}
			return exitStatus(e.Status), nil
		}
	}
}

// fileConns turns the received descriptors into connections; any other
// number than want is refused.
func fileConns(files []*os.File, want int) ([]net.Conn, error) {
	defer fdpass.Close(files)
	if len(files) != want {
		return nil, fmt.Errorf("got %d stream descriptors, want %d", len(files), want)
	}
	var conns []net.Conn
	for _, f := range files {
		c, err := net.FileConn(f)
		if err == nil {
			if _, ok := c.(*net.UnixConn); !ok {
				c.Close()
				err = errors.New("a stream that is not a Unix socket")
			}
		}
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

// newExecID names an exec'd process for the agent.
func newExecID() string {
	var b [6]byte
	rand.Read(b[:])
	return "exec" + hex.EncodeToString(b[:])
}

// serveExec is the VMM's side of an exec connection: it has the agent
// start the process, sends its streams' connections back with the reply,
// then the process's exit status. A client that goes before the exit
// takes the process with it (SIGKILL).
func (p *vmmProc) serveExec(c *net.UnixConn, req ctlRequest) {
	c.SetDeadline(time.Now().Add(ctlTimeout))
	enc := json.NewEncoder(c)
	failf := func(format string, args ...any) {
		enc.Encode(execReply{Error: fmt.Sprintf(format, args...)})
	}
	target, st := p.id, p.getStatus()
	if req.Container != "" && req.Container != p.id {
		// A pod's container, in this sandbox's VM.
		target, st = req.Container, statusStopped
		if p.pod != nil {
			p.pod.mu.Lock()
			if m := p.pod.members[target]; m != nil {
				st = m.getStatus()
			}
			p.pod.mu.Unlock()
		}
	}
	switch st {
	case statusCreated, statusRunning:
	case statusStopped:
		failf("cannot exec in a stopped container")
		return
	default:
		failf("cannot exec in a container that is %s", st)
		return
	}
	if req.Process == nil || checkProcess(req.Process) != nil {
		failf("exec: no valid process")
		return
	}
	id := newExecID()
	proc := *req.Process
	names := []string{agentproto.Stdin, agentproto.Stdout, agentproto.Stderr}
	if proc.Terminal {
		names = []string{agentproto.TTY}
	}
	ctx, cancel := context.WithTimeout(context.Background(), handlerTimeout)
	defer cancel()
	conns := make([]net.Conn, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conns[i], errs[i] = p.ag.Stream(ctx, agentproto.StreamID{Container: target, Exec: id, Name: n})
		}()
	}
	rep, err := p.ag.Call(ctx, agentproto.Request{Op: agentproto.OpExec, Container: target, Exec: id, Process: &proc,
		IO: &agentproto.ProcessIO{Terminal: proc.Terminal, Stdin: !proc.Terminal}})
	callErr := err
	if err != nil {
		cancel()
	}
	wg.Wait()
	if err == nil {
		err = errors.Join(errs...)
	}
	var files []*os.File
	for _, sc := range conns {
		if err != nil || sc == nil {
			break
		}
		fc, ok := sc.(interface{ File() (*os.File, error) })
		if !ok {
			err = errors.New("a stream that is not a socket")
			break
		}
		f, ferr := fc.File()
		if ferr != nil {
			err = ferr
			break
		}
		files = append(files, f)
	}
	for _, sc := range conns {
		if sc != nil {
			sc.Close()
		}
	}
	defer fdpass.Close(files)
	if err != nil {
		if callErr == nil {
			p.killExec(target, id)
		}
		var se *container.StartError
		if errors.As(err, &se) {
			failf("%s", container.CleanText(se.Msg))
		} else {
			failf("%v", p.agentError("exec", err))
		}
		return
	}
	pid := rep.Pid
	if pid <= 0 || pid > maxPid {
		pid = 0
	}
	b, _ := json.Marshal(execReply{Exec: id, Pid: pid})
	if err := fdpass.Send(c, append(b, '\n'), files...); err != nil {
		p.logf("exec: send the streams: %v", err)
		p.killExec(target, id)
		return
	}
	fdpass.Close(files)
	files = nil

	// The client says nothing more: its end of the connection is how
	// the VMM learns that it has gone.
	c.SetDeadline(time.Time{})
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	go func() {
		io.Copy(io.Discard, io.LimitReader(c, maxCtl))
		wcancel()
	}()
	status, err := p.ag.Wait(wctx, target, id)
	if wctx.Err() != nil {
		p.killExec(target, id)
		return
	}
	if err != nil {
		status = killedStatus // the agent went with the VM, and the process with it
	}
	enc.Encode(execReply{Exited: true, Status: exitStatus(status)})
}

// killExec kills an exec'd process whose client has gone, and takes its
// exit event.
func (p *vmmProc) killExec(target, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	defer cancel()
	if _, err := p.ag.Call(ctx, agentproto.Request{Op: agentproto.OpSignal, Container: target, Exec: id, Signal: int(syscall.SIGKILL)}); err != nil {
		return
	}
	p.ag.Wait(ctx, target, id)
}

// handleIO carries out resize and ps.
func (p *vmmProc) handleIO(ctx context.Context, req ctlRequest, st, target string) ctlReply {
	fail := func(format string, args ...any) ctlReply {
		return ctlReply{Status: st, Error: fmt.Sprintf(format, args...)}
	}
	if st != statusCreated && st != statusRunning {
		return fail("container not running")
	}
	switch req.Op {
	case opResize:
		if req.Size == nil || req.Size.Width == 0 || req.Size.Height == 0 || req.Size.Width > 0xffff || req.Size.Height > 0xffff {
			return fail("resize: invalid size")
		}
		if _, err := p.ag.Call(ctx, agentproto.Request{Op: agentproto.OpResize, Container: target, Exec: req.Exec, Size: req.Size}); err != nil {
			return fail("resize: %v", err)
		}
		return ctlReply{Status: st}
	}
	return fail("unknown operation %q", req.Op)
}

// execTarget is where an exec into container id goes: the VMM process
// of its state directory dir, or for a pod's container its sandbox's,
// which runs it.
func (g *globals) execTarget(id, dir string) (string, string) {
	if _, rec, err := g.load(id); err == nil && rec.Sandbox != "" {
		if sbDir, err := g.containerDir(rec.Sandbox); err == nil {
			return sbDir, id
		}
	}
	return dir, ""
}
