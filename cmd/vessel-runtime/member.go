package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/internal/fdpass"
)

// opMember is the control request that creates a pod container in its
// sandbox's VM (see pod.go); its connection stays open for the
// container's life.
const opMember = "member"

// createMember creates a pod's container in its sandbox's VM: it starts
// the container's member process, runs the createRuntime and prestart
// hooks, and waits until the container exists in the VM. A terminal is
// a host pty as for other containers (terminal.go), whose slave is the
// member process's stdio and controlling terminal: the sandbox's VMM
// process copies between it and the guest's pty, the member process
// passes its size on at each SIGWINCH. Its master goes to sock, or, for
// run without one, back to the caller.
func (g *globals) createMember(id, sandbox string, b *bundle, pidFile, dir string, sock *net.UnixConn) (_ *exec.Cmd, pty *hostPty, err error) {
	cmd, pty, err := g.startMember(id, sandbox, b, pidFile, dir)
	if err != nil || sock == nil || pty == nil {
		return cmd, pty, err
	}
	err = sendConsole(sock, pty)
	pty.close()
	if err != nil {
		call(dir, ctlRequest{Op: opDelete})
		return nil, nil, err
	}
	return cmd, nil, nil
}

// startMember is createMember up to the console socket.
func (g *globals) startMember(id, sandbox string, b *bundle, pidFile, dir string) (_ *exec.Cmd, pty *hostPty, err error) {
	sbDir, sb, err := g.load(sandbox)
	if err != nil {
		return nil, nil, errorf("sandbox %q of container %q does not exist", sandbox, id)
	}
	if sb.Sandbox != "" {
		return nil, nil, errorf("container %q is not a pod sandbox", sandbox)
	}
	if st := sb.status(sbDir); st != statusCreated && st != statusRunning {
		return nil, nil, errorf("sandbox %q is %s", sandbox, st)
	}
	if err := checkMemberNamespaces(b.spec, sb.Pid, sb.Netns); err != nil {
		return nil, nil, errorf("%v", err)
	}
	req, trees, err := memberTrees(b)
	if err != nil {
		return nil, nil, err
	}
	defer fdpass.Close(trees)
	if err := os.MkdirAll(g.root, 0o700); err != nil {
		return nil, nil, errorf("state directory: %v", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, nil, errorf("container with id %q already exists", id)
		}
		return nil, nil, errorf("state directory: %v", err)
	}
	var cmd *exec.Cmd
	defer func() {
		if err != nil {
			pty.close()
			if cmd != nil && cmd.Process != nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
			os.RemoveAll(dir)
		}
	}()
	rec := &record{ID: id, Bundle: b.dir, Created: time.Now().UTC(), Annotations: b.spec.Annotations,
		Hooks: b.spec.Hooks, Sandbox: sandbox}
	if err := rec.save(dir); err != nil {
		return nil, nil, errorf("%v", err)
	}
	reqJSON, err := json.Marshal(ctlRequest{Op: opMember, Container: id, Member: &req})
	if err != nil {
		return nil, nil, errorf("%v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, memberFile), reqJSON, 0o600); err != nil {
		return nil, nil, errorf("%v", err)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, nil, errorf("%v", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, errorf("%v", err)
	}
	defer r.Close()
	goR, goW, err := os.Pipe()
	if err != nil {
		w.Close()
		return nil, nil, errorf("%v", err)
	}
	defer goW.Close()
	cmd = exec.Command(self, append(g.args(), "member", id, sandbox)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = append([]*os.File{w, goR}, trees...) // readyFD, goFD, the trees
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if b.spec.Process.Terminal {
		if pty, err = newHostPty(b.spec.Process.ConsoleSize); err != nil {
			w.Close()
			goR.Close()
			return nil, nil, errorf("%v", err)
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = pty.slave, pty.slave, pty.slave
		cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, 0
	}
	err = cmd.Start()
	if pty != nil {
		// The member process and the sandbox's VMM process hold it.
		pty.slave.Close()
		pty.slave = nil
	}
	w.Close()
	goR.Close()
	if err != nil {
		return nil, nil, errorf("start the container's process: %v", err)
	}
	rec.Pid = cmd.Process.Pid
	rec.StartTime, _ = procStartTime(rec.Pid)
	if err := rec.save(dir); err != nil {
		return nil, nil, errorf("%v", err)
	}
	st := ociState{OCIVersion: ociVersion, ID: id, Status: statusCreating, Pid: rec.Pid,
		Bundle: b.dir, Annotations: b.spec.Annotations, Created: rec.Created}
	for _, kind := range []string{hookCreateRuntime, hookPrestart} {
		if err := runHooks(context.Background(), b.spec.Hooks, kind, b.dir, st); err != nil {
			return nil, nil, errorf("%v", err)
		}
	}
	if _, err := goW.Write([]byte("go\n")); err != nil {
		return nil, nil, errorf("the container's process ended before the container was created")
	}
	goW.Close()
	line, _ := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSpace(line)
	if line != "ok" {
		if line == "" {
			line = "the container's process ended before the container was created"
		}
		return nil, nil, errorf("%s", line)
	}
	if pidFile != "" {
		if err := writePidFile(pidFile, rec.Pid); err != nil {
			call(dir, ctlRequest{Op: opDelete})
			return nil, nil, errorf("--pid-file: %v", err)
		}
	}
	return cmd, pty, nil
}

// memberFile holds a member process's request, written by create.
const memberFile = "member.json"

func newMember(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "member ID SANDBOX",
		Short:  "the process of a pod's container (started by create)",
		Hidden: true,
		Args:   cobra.ExactArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			return serveMember(g, args[0], args[1])
		},
	}
}

// serveMember is a pod container's member process: it has the sandbox's
// VMM process create the container (passing its stdio and the trees
// create detached), tells create, forwards the container's control
// requests to the sandbox's VMM process, and exits with the container's
// exit status.
func serveMember(g *globals, id, sandbox string) error {
	readyW, err := startDetached()
	if err != nil {
		return err
	}
	fail := func(err error) error {
		fmt.Fprintln(readyW, strings.ReplaceAll(err.Error(), "\n", " "))
		readyW.Close()
		return exitCode(1)
	}
	dir, err := g.containerDir(id)
	if err != nil {
		return fail(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, memberFile))
	if err != nil {
		return fail(err)
	}
	var req ctlRequest
	if err := json.Unmarshal(b, &req); err != nil || req.Member == nil {
		return fail(fmt.Errorf("%s: damaged", memberFile))
	}
	fds := []int{0, 1, 2}
	for i := range req.Member.Trees {
		fds = append(fds, goFD+1+i)
	}
	sbDir, err := g.containerDir(sandbox)
	if err != nil {
		return fail(err)
	}
	sbSock, err := sockPath(sbDir, ctlSock)
	if err != nil {
		return fail(err)
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sbSock, Net: "unix"})
	if err != nil {
		return fail(fmt.Errorf("the sandbox's VMM: %w", err))
	}
	defer conn.Close()
	files := []*os.File{os.Stdin, os.Stdout, os.Stderr}
	for _, fd := range fds[3:] {
		files = append(files, os.NewFile(uintptr(fd), "tree"))
	}
	err = fdpass.Send(conn, b, files...)
	fdpass.Close(files[3:])
	if err != nil {
		return fail(fmt.Errorf("the sandbox's VMM: %w", err))
	}
	// Our stdio is the container's now, copied by the sandbox's VMM
	// process; ours must not hold the caller's pipes open. A terminal's
	// slave stays our fd 0 and controlling terminal, for its size.
	terminal := req.Member.Spec != nil && req.Member.Spec.Process != nil && req.Member.Spec.Process.Terminal
	if devNull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
		for _, fd := range []int{0, 1, 2} {
			if fd != 0 || !terminal {
				unix.Dup2(int(devNull.Fd()), fd)
			}
		}
		devNull.Close()
	}
	dec := json.NewDecoder(io.LimitReader(conn, maxCtl))
	conn.SetReadDeadline(time.Now().Add(ctlTimeout))
	var rep ctlReply
	if err := dec.Decode(&rep); err != nil {
		return fail(fmt.Errorf("the sandbox's VMM: %w", err))
	}
	if rep.Error != "" {
		return fail(errors.New(rep.Error))
	}
	conn.SetReadDeadline(time.Time{})
	os.Remove(filepath.Join(dir, memberFile))
	ctlPath, err := sockPath(dir, ctlSock)
	if err != nil {
		return fail(err)
	}
	ctl, err := net.Listen("unix", ctlPath)
	if err != nil {
		return fail(fmt.Errorf("control socket: %w", err))
	}
	defer ctl.Close()
	go forwardControl(ctl, sbDir, id)
	if terminal {
		go forwardResize(sbDir, id)
	}
	fmt.Fprintln(readyW, "ok")
	readyW.Close()
	// The exit status, or the connection's end: the VM ended (or the
	// container was deleted before it ran), which killed the container.
	rep = ctlReply{}
	if err := dec.Decode(&rep); err != nil || rep.Exit == nil {
		return exitCode(128 + int(unix.SIGKILL))
	}
	return exitCode(*rep.Exit)
}

// forwardResize passes the size of the member process's terminal (its
// fd 0, the host pty's slave) on to the container's pty in the VM at
// each SIGWINCH, which the client's resize of the master sends it.
func forwardResize(sbDir, id string) {
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	for range winch {
		if box, ok := winSize(0); ok {
			call(sbDir, ctlRequest{Op: opResize, Container: id, Size: box})
		}
	}
}

// forwardControl serves a pod container's control socket: each request
// goes on to the sandbox's VMM process, for this container.
func forwardControl(ln net.Listener, sbDir, id string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(ctlTimeout))
			var req ctlRequest
			if err := json.NewDecoder(io.LimitReader(c, maxCtl)).Decode(&req); err != nil {
				return
			}
			if req.Op == opMember {
				json.NewEncoder(c).Encode(ctlReply{Error: "not a sandbox"})
				return
			}
			req.Container = id
			rep, err := call(sbDir, req)
			if err != nil && rep.Error == "" {
				rep.Error = err.Error()
			}
			json.NewEncoder(c).Encode(rep)
		}()
	}
}
