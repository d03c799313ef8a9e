package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/internal/atomicfile"
	"github.com/vesselvm/vessel/internal/template"
)

// createFlags are create's and run's.
type createFlags struct {
	bundle, pidFile, consoleSocket string
	noPivot, noNewKeyring          bool
	preserveFDs                    int
	// detach: vessel-runtime does not stay (create; run -d).
	detach bool
}

func addCreateFlags(c *cobra.Command, f *createFlags) {
	fl := c.Flags()
	fl.StringVarP(&f.bundle, "bundle", "b", ".", "the bundle: the directory of config.json")
	fl.StringVar(&f.pidFile, "pid-file", "", "write the PID of the container's VMM process to this file")
	fl.StringVar(&f.consoleSocket, "console-socket", "", "a Unix socket to send the terminal's master to (with process.terminal)")
	fl.BoolVar(&f.noPivot, "no-pivot", false, "accepted for runc compatibility")
	fl.BoolVar(&f.noNewKeyring, "no-new-keyring", false, "accepted for runc compatibility")
	fl.IntVar(&f.preserveFDs, "preserve-fds", 0, "extra file descriptors to pass (not supported yet: 0 only)")
}

func newCreate(g *globals) *cobra.Command {
	var f createFlags
	c := &cobra.Command{
		Use:   "create [flags] ID",
		Short: "create a container in a new microVM, without starting its process",
		Args:  exactID,
		RunE: func(_ *cobra.Command, args []string) error {
			f.detach = true
			cmd, _, err := g.create(args[0], f)
			if err != nil {
				return err
			}
			cmd.Process.Release()
			return nil
		},
	}
	addCreateFlags(c, &f)
	return c
}

func newRun(g *globals) *cobra.Command {
	var f createFlags
	c := &cobra.Command{
		Use:   "run [flags] ID",
		Short: "create and start a container, wait for it and delete it; exit with its status",
		Args:  exactID,
		RunE: func(_ *cobra.Command, args []string) error {
			id := args[0]
			cmd, pty, err := g.create(id, f)
			if err != nil {
				return err
			}
			dir := filepath.Join(g.root, id)
			rec := &record{ID: id, Bundle: f.bundle, Pid: cmd.Process.Pid}
			if _, rec2, err := g.load(id); err == nil {
				rec = rec2
			}
			if _, err := call(dir, ctlRequest{Op: opStart}); err != nil {
				pty.close()
				call(dir, ctlRequest{Op: opDelete})
				cmd.Wait()
				g.postHooks(rec, hookPoststop, statusStopped)
				os.RemoveAll(dir)
				return err
			}
			g.postHooks(rec, hookPoststart, statusRunning)
			if f.detach {
				cmd.Process.Release()
				return nil
			}
			finish := func() {}
			if pty != nil {
				finish = foregroundTTY(pty)
			}
			cmd.Wait()
			finish()
			pty.close()
			g.postHooks(rec, hookPoststop, statusStopped)
			os.RemoveAll(dir)
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				return exitCode(128 + int(ws.Signal()))
			}
			return exitCode(cmd.ProcessState.ExitCode())
		},
	}
	addCreateFlags(c, &f)
	c.Flags().BoolVarP(&f.detach, "detach", "d", false, "return once the container has started (the VMM process keeps running)")
	return c
}

// exactID checks a command's one argument, the container ID.
func exactID(_ *cobra.Command, args []string) error {
	if len(args) != 1 {
		return errorf("want exactly one argument, the container ID (got %d)", len(args))
	}
	return nil
}

// create checks the bundle, makes the state directory, starts the VMM
// process and waits until it has created the container in the guest.
// Any failure leaves no state directory and no process.
func (g *globals) create(id string, f createFlags) (_ *exec.Cmd, _ *hostPty, err error) {
	dir, err := g.containerDir(id)
	if err != nil {
		return nil, nil, err
	}
	if f.preserveFDs != 0 {
		return nil, nil, errorf("--preserve-fds %d: passing extra file descriptors is not supported by vessel-runtime yet", f.preserveFDs)
	}
	b, err := loadBundle(f.bundle)
	if err != nil {
		return nil, nil, err
	}
	var netns *os.File // the spec's network namespace, opened once
	if p := netnsPath(b.spec); p != "" {
		if netns, err = openNetns(p); err != nil {
			return nil, nil, errorf("%v", err)
		}
		defer netns.Close()
		if hostNetns(netns) {
			return nil, nil, errorf("network namespace path %q is the host's: a container in a VM cannot share the host's network (its interfaces would be handed to the VM)", p)
		}
	}
	terminal := b.spec.Process.Terminal
	if err := checkTerminal(terminal, f.detach, f.consoleSocket); err != nil {
		return nil, nil, err
	}
	for _, p := range []string{g.kernel, g.initramfs} {
		if _, err := os.Stat(p); err != nil {
			return nil, nil, errorf("no guest artifact at %s: build it with `make`, or pass --kernel and --initramfs", p)
		}
	}
	pidFile := f.pidFile
	if pidFile != "" {
		if pidFile, err = filepath.Abs(pidFile); err != nil {
			return nil, nil, errorf("--pid-file: %v", err)
		}
	}
	var sock *net.UnixConn
	if f.consoleSocket != "" {
		if sock, err = dialConsole(f.consoleSocket); err != nil {
			return nil, nil, err
		}
		defer sock.Close()
	}
	if sb := sandboxOf(b.spec); sb != "" {
		return g.createMember(id, sb, b, pidFile, dir, sock)
	}
	_, vmMemory, err := g.vmSize(b.spec)
	if err != nil {
		return nil, nil, errorf("%v", err)
	}
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
	var pty *hostPty
	var cg *hostCgroup
	defer func() {
		if err != nil {
			pty.close()
			if cmd != nil && cmd.Process != nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
			cg.remove()
			os.RemoveAll(dir)
		}
	}()
	if cg, err = makeHostCgroup(b.spec, g.systemdCgroup, vmMemory); err != nil {
		return nil, nil, errorf("%v", err)
	}
	rec := &record{ID: id, Bundle: b.dir, Created: time.Now().UTC(), Annotations: b.spec.Annotations, Hooks: b.spec.Hooks,
		Netns: netnsPath(b.spec), Cgroup: cg}
	if err := rec.save(dir); err != nil {
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
	cmd = exec.Command(self, append(g.args(), "vmm", id)...)
	// The caller's stdio is the container's: the VMM process keeps it.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{w, goR} // readyFD, goFD
	// A mount namespace of its own: the VMM process binds single files
	// for the VM there (see mounts.go), seen by nobody else and gone
	// with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: syscall.CLONE_NEWNS}
	if cg != nil {
		// Born in its host cgroup: the guest's RAM is charged there
		// from its first page.
		cgf, err := cg.open()
		if err != nil {
			w.Close()
			goR.Close()
			return nil, nil, errorf("%v", err)
		}
		defer cgf.Close()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cgf.Fd())
	}
	if terminal {
		// The slave is the VMM process's stdio and controlling
		// terminal: a size set on the master sends it SIGWINCH.
		if pty, err = newHostPty(b.spec.Process.ConsoleSize); err != nil {
			w.Close()
			goR.Close()
			return nil, nil, errorf("%v", err)
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = pty.slave, pty.slave, pty.slave
		cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, 0
	}
	// ... and the container's network namespace (see net.go): a new one,
	// or the one at the spec's path.
	if netns == nil {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWNET
		err = cmd.Start()
	} else {
		err = startInNetns(cmd, netns)
	}
	w.Close()
	goR.Close()
	if pty != nil {
		pty.slave.Close()
		pty.slave = nil
	}
	if err != nil {
		return nil, nil, errorf("start the VMM process: %v", err)
	}
	rec.Pid = cmd.Process.Pid
	rec.StartTime, _ = procStartTime(rec.Pid)
	if err := rec.save(dir); err != nil {
		return nil, nil, errorf("%v", err)
	}
	// runtime-spec: createRuntime and then prestart hooks run once the
	// container's namespaces exist (the VMM process's network namespace
	// is the container's: docker's libnetwork-setkey hook finds it
	// through the state's pid) and before the user process starts; the
	// VMM process reads the network they set up after goFD says go.
	st := ociState{OCIVersion: ociVersion, ID: id, Status: statusCreating, Pid: rec.Pid,
		Bundle: b.dir, Annotations: b.spec.Annotations, Created: rec.Created}
	for _, kind := range []string{hookCreateRuntime, hookPrestart} {
		if err := runHooks(context.Background(), b.spec.Hooks, kind, b.dir, st); err != nil {
			return nil, nil, errorf("%v", err)
		}
	}
	// The VM's template, now that the hooks have made its interfaces:
	// one that cannot be had is no failure, the VM boots instead.
	if snap, err := g.templateFor(b, rec.Pid); err != nil {
		if !errors.Is(err, template.ErrBusy) {
			logError(g.log, g.logFormat, fmt.Sprintf("container %s: template: %v; booting its VM", id, err), time.Now())
		}
	} else if snap != "" {
		rec.Template = snap
		if err := rec.save(dir); err != nil {
			return nil, nil, errorf("%v", err)
		}
	}
	if _, err := goW.Write([]byte("go\n")); err != nil {
		return nil, nil, errorf("the VMM process ended before the container was created")
	}
	goW.Close()
	line, _ := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSpace(line)
	if line != "ok" {
		if line == "" {
			line = "the VMM process ended before the container was created"
		}
		return nil, nil, errorf("%s", line)
	}
	if pidFile != "" {
		if err := writePidFile(pidFile, rec.Pid); err != nil {
			call(dir, ctlRequest{Op: opDelete})
			return nil, nil, errorf("--pid-file: %v", err)
		}
	}
	if sock != nil {
		err = sendConsole(sock, pty)
		pty.close()
		pty = nil
		if err != nil {
			call(dir, ctlRequest{Op: opDelete})
			return nil, nil, err
		}
	}
	return cmd, pty, nil
}

// args are the global flags again, for the VMM process.
func (g *globals) args() []string {
	return []string{"--root", g.root, "--log", g.log, "--log-format", g.logFormat,
		"--kernel", g.kernel, "--initramfs", g.initramfs,
		"--vm-memory", strconv.Itoa(g.memoryMiB), "--vm-cpus", strconv.Itoa(g.cpus),
		"--no-template=" + strconv.FormatBool(g.noTemplate), "--template-dir", g.templateDir}
}

// writePidFile writes the PID atomically, as runc does: the caller may
// read the file as soon as it exists.
func writePidFile(path string, pid int) error {
	return atomicfile.Write(path, []byte(strconv.Itoa(pid)), 0o644, false)
}

func newStart(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "start ID",
		Short: "start a created container's process",
		Args:  exactID,
		RunE: func(_ *cobra.Command, args []string) error {
			dir, rec, err := g.load(args[0])
			if err != nil {
				return err
			}
			if st := rec.status(dir); st != statusCreated {
				return errorf("cannot start a container that is %s", st)
			}
			if _, err := call(dir, ctlRequest{Op: opStart}); err != nil {
				return err
			}
			g.postHooks(rec, hookPoststart, statusRunning)
			return nil
		},
	}
}

func newState(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "state ID",
		Short: "print a container's state as runtime-spec's JSON",
		Args:  exactID,
		RunE: func(c *cobra.Command, args []string) error {
			dir, rec, err := g.load(args[0])
			if err != nil {
				return err
			}
			st := ociState{OCIVersion: ociVersion, ID: rec.ID, Status: rec.status(dir), Bundle: rec.Bundle,
				Annotations: rec.Annotations, Created: rec.Created}
			if st.Status != statusStopped {
				st.Pid = rec.Pid
			}
			b, _ := json.MarshalIndent(st, "", "  ")
			fmt.Fprintf(c.OutOrStdout(), "%s\n", b)
			return nil
		},
	}
}

func newKill(g *globals) *cobra.Command {
	var all bool
	c := &cobra.Command{
		Use:   "kill [--all] ID [SIGNAL]",
		Short: "send a signal (default SIGTERM; a number or a name) to the container's process",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return errorf("want the container ID and an optional signal (got %d arguments)", len(args))
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error {
			sig := unix.SIGTERM
			if len(args) == 2 {
				s, err := parseSignal(args[1])
				if err != nil {
					return err
				}
				sig = s
			}
			dir, rec, err := g.load(args[0])
			if err != nil {
				return err
			}
			if st := rec.status(dir); st != statusCreated && st != statusRunning && st != statusPaused {
				return errorf("container not running")
			}
			_, err = call(dir, ctlRequest{Op: opKill, Signal: int(sig)})
			return err
		},
	}
	// As in runc (1.2 and later), where --all is obsolete: the signal
	// goes to the container's first process, and the guest's runc
	// itself sends SIGKILL to every process of a container without a
	// PID namespace of its own.
	c.Flags().BoolVarP(&all, "all", "a", false, "obsolete, as in runc: the signal goes to the container's first process")
	return c
}

// parseSignal reads a signal as runc does: a number, or a name with or
// without SIG.
func parseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, errorf("invalid signal %q", s)
		}
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, errorf("invalid signal %q", s)
}

func newDelete(g *globals) *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "delete [--force] ID",
		Short: "delete a stopped or created container (--force: any), its VM and its state",
		Args:  exactID,
		RunE: func(_ *cobra.Command, args []string) error {
			dir, rec, err := g.load(args[0])
			if err != nil {
				if force && validID(args[0]) {
					return nil // runc: nothing to delete is no failure with --force
				}
				return err
			}
			if rec.vmmAlive() {
				if st := rec.status(dir); (st == statusRunning || st == statusPaused) && !force {
					return errorf("cannot delete container %s that is not stopped: %s", rec.ID, st)
				}
				call(dir, ctlRequest{Op: opDelete})
				if !rec.waitGone(teardownTimeout + 5*time.Second) {
					rec.kill(syscall.SIGKILL)
					rec.waitGone(5 * time.Second)
				}
			}
			rec.Cgroup.remove()
			g.postHooks(rec, hookPoststop, statusStopped)
			if err := os.RemoveAll(dir); err != nil {
				return errorf("delete %s: %v", rec.ID, err)
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "kill the container first if it runs")
	return c
}

// postHooks runs the poststart or poststop hooks: runtime-spec says a
// failure of one is logged as a warning and the remaining hooks and the
// lifecycle go on.
func (g *globals) postHooks(rec *record, kind, status string) {
	st := ociState{OCIVersion: ociVersion, ID: rec.ID, Status: status, Bundle: rec.Bundle,
		Annotations: rec.Annotations, Created: rec.Created}
	if status != statusStopped {
		st.Pid = rec.Pid
	}
	for _, err := range runPostHooks(context.Background(), rec.Hooks, kind, rec.Bundle, st) {
		logLine(g.log, g.logFormat, "warning", err.Error(), time.Now())
	}
}
