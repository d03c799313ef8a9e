// Command vessel-runtime is vessel as an OCI runtime: a binary with
// runc's command line that containerd's runc shim (through go-runc),
// docker and podman can call instead of runc, and that runs each
// container in a vessel microVM of its own, by runc inside the guest.
//
//	vessel-runtime [global flags] create --bundle B [--pid-file P] ID
//	vessel-runtime [global flags] start|state ID
//	vessel-runtime [global flags] kill [--all] ID [SIGNAL]
//	vessel-runtime [global flags] delete [--force] ID
//	vessel-runtime [global flags] run --bundle B [--pid-file P] [-d] [--console-socket S] ID
//	vessel-runtime [global flags] pause|resume ID
//	vessel-runtime [global flags] update [--resources FILE|-] [--memory M] [--cpu-quota Q] [--cpu-period P] [--cpuset-cpus L] [--pids-limit N] ID
//	vessel-runtime [global flags] exec [--process F | ARGS...] [-d] [--pid-file P] [--console-socket S] [-t] ... ID
//	vessel-runtime [global flags] ps [--format table|json] ID
//	vessel-runtime [global flags] list [--format table|json] [-q]
//	vessel-runtime [global flags] features
//	vessel-runtime [global flags] checkpoint|restore ...   (not supported: exit 1)
//
// create boots the VM and has the guest's runc create the container
// (user process not started), then returns. The PID it writes to the
// pid file is the VMM: a vessel-runtime process in a session of its own
// that holds the caller's stdio (fds 0, 1 and 2, pipes or files), streams
// them to the container over the guest agent, serves the other commands
// on a Unix socket in the container's state directory, and exits with
// the container's exit status (128+N when signal N killed it), as
// runsc's sandbox process does, once the container has exited and the
// VM has ended. The bundle's rootfs reaches the guest over vessel's
// confined 9P share (read-only when root.readonly) and becomes the
// container's root there; each bind mount of a host directory is a 9P
// share of its own, bound at its destination with its options, after
// the other mounts; bind mounts of single files (docker's
// /etc/resolv.conf, /etc/hosts, /etc/hostname) share one 9P device that
// holds just those files (mounts.go). The VMM process has a mount
// namespace of its own. createRuntime, prestart, poststart and poststop
// hooks run on the host at runtime-spec's moments (hooks.go);
// createContainer and startContainer hooks, which would run inside the
// VM, are refused.
// config.json goes to the guest's runc as it is but for root.path, the
// bind mounts' sources, linux.cgroupsPath (a host's cgroup path
// means nothing in the VM) and the network namespace: the container
// shares the VM's, whose NICs stand for the interfaces of the
// container's network namespace, where the VMM process lives (net.go).
//
// With process.terminal, the VMM process holds a host pty's slave as its
// stdio and controlling terminal and the master goes to --console-socket
// (terminal.go); exec runs more processes, held by vessel-runtime itself
// or, with --detach, by an exec helper process (exec.go).
//
// Every failure exits 1 with one line on stderr and, with --log, a
// line in that file in --log-format (text, or json as
// {"level":"error","msg":...,"time":...}, which containerd reads back),
// and leaves no state directory or process behind.
//
// Not done yet (issue 10): --preserve-fds, a terminal for a pod's
// container, pause, resume and update of a pod's container.
//
// pause stops the VM's vCPUs (state "paused"; a kill meanwhile is
// delivered at resume, delete resumes first); update has the guest's
// runc update the container's cgroup, within the VM's size (control.go).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/internal/guestdir"
	"github.com/vesselvm/vessel/internal/seccomp"
)

// gitVersion is set by the build (make build) to `git describe`.
var gitVersion = "unknown"

// ociVersion is the runtime-spec version vessel-runtime reports.
const ociVersion = "1.2.0"

// globals are runc's global flags and vessel's runtime-wide settings.
type globals struct {
	root          string
	log           string
	logFormat     string
	debug         bool
	systemdCgroup bool
	kernel        string
	initramfs     string
	memoryMiB     int
	cpus          int
	noTemplate    bool
	templateDir   string
}

// runtimeError is a failure: one line, exit status 1, as runc's.
type runtimeError struct{ msg string }

func (e *runtimeError) Error() string { return e.msg }

func errorf(format string, args ...any) error {
	return &runtimeError{msg: fmt.Sprintf(format, args...)}
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "vessel-runtime",
		Short:         "an OCI runtime that runs each container in a vessel microVM",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       gitVersion,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return g.check()
		},
	}
	root.SetVersionTemplate(fmt.Sprintf("vessel-runtime version %s\nspec: %s\n", gitVersion, ociVersion))
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return errorf("%v", err) })
	fl := root.PersistentFlags()
	fl.StringVar(&g.root, "root", defaultRoot(), "directory for the containers' state")
	fl.StringVar(&g.log, "log", "", "append errors to this file (default: stderr only)")
	fl.StringVar(&g.logFormat, "log-format", "text", "format of --log: text or json")
	fl.BoolVar(&g.debug, "debug", false, "log debug messages too")
	fl.BoolVar(&g.systemdCgroup, "systemd-cgroup", false, "accepted for runc compatibility; the container's cgroup is in the VM")
	kernel, initrd := builtGuest()
	fl.StringVar(&g.kernel, "kernel", kernel, "the guest kernel the VMs boot")
	fl.StringVar(&g.initramfs, "initramfs", initrd, "the guest initramfs (with vessel's init and agent)")
	fl.IntVar(&g.memoryMiB, "vm-memory", 512, "RAM of each container's VM in MiB")
	fl.IntVar(&g.cpus, "vm-cpus", 1, "vCPUs of each container's VM")
	fl.BoolVar(&g.noTemplate, "no-template", false, "boot every container's VM instead of restoring it from a template")
	fl.StringVar(&g.templateDir, "template-dir", "", "the templates' cache directory (default: $VESSEL_TEMPLATE_DIR, else "+defaultTemplateDir+")")
	root.AddCommand(newCreate(g), newStart(g), newState(g), newKill(g), newDelete(g), newRun(g), newVMM(g), newMember(g),
		newPause(g), newResume(g), newUpdate(g), newEvents(g), newTemplateBuild(g))
	root.AddCommand(newExec(g), newExecHelper(g), newPs(g), newList(g), newFeatures(),
		newUnsupported("checkpoint", "checkpoint a running container"), newUnsupported("restore", "restore a container from a checkpoint"))
	for _, c := range root.Commands() {
		c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return errorf("%v", err) })
	}
	return root
}

// check validates the global flags.
func (g *globals) check() error {
	if g.logFormat != "text" && g.logFormat != "json" {
		return errorf("--log-format %q: want text or json", g.logFormat)
	}
	if g.root == "" {
		return errorf("--root: no state directory")
	}
	root, err := filepath.Abs(g.root)
	if err != nil {
		return errorf("--root %q: %v", g.root, err)
	}
	g.root = root
	// In a shared temporary directory (the unprivileged default without
	// XDG_RUNTIME_DIR) another user could make the root first and plant
	// states whose hooks start and delete would run: it must be ours
	// and closed to others, as vessel's own state root.
	if tmp := filepath.Clean(os.TempDir()); filepath.Dir(root) == tmp {
		if err := container.PrivateDir(root); err != nil {
			return errorf("--root: %v", err)
		}
	}
	// The VMM process works from /: its paths must not be relative.
	for _, p := range []*string{&g.log, &g.kernel, &g.initramfs, &g.templateDir} {
		if *p != "" {
			if *p, err = filepath.Abs(*p); err != nil {
				return errorf("%v", err)
			}
		}
	}
	if g.memoryMiB < 64 {
		return errorf("--vm-memory %d: want at least 64 (MiB)", g.memoryMiB)
	}
	if g.cpus < 1 {
		return errorf("--vm-cpus %d: want at least 1", g.cpus)
	}
	return nil
}

// defaultRoot is runc's: /run/vessel-runtime for root, else under
// $XDG_RUNTIME_DIR (podman calls state without --root).
func defaultRoot() string {
	if os.Geteuid() != 0 {
		if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
			return filepath.Join(d, "vessel-runtime")
		}
		return filepath.Join(os.TempDir(), fmt.Sprintf("vessel-runtime-%d", os.Geteuid()))
	}
	return "/run/vessel-runtime"
}

// builtGuest is where `make` installs the guest kernel and initramfs,
// as cmd/vessel finds them.
func builtGuest() (kernel, initrd string) {
	dir := guestdir.Dir()
	return filepath.Join(dir, "bzImage"), filepath.Join(dir, "initramfs.cpio")
}

// exitCode is an exit status to leave with and no message (run, and the
// VMM process, end with the container's status).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func main() {
	seccomp.RelayMain()
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run executes the command line and returns the exit status; errors go
// to stderr as one line and to --log.
func run(args []string, stderr io.Writer) int {
	var g globals
	root := newRoot(&g)
	root.SetArgs(args)
	root.SetOut(os.Stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ec exitCode
	if errors.As(err, &ec) {
		return int(ec)
	}
	msg, code := err.Error(), 1
	var ce *codedError
	if errors.As(err, &ce) {
		code = ce.code
	}
	var re *runtimeError
	if !errors.As(err, &re) && ce == nil {
		// cobra's own errors (unknown command, wrong arguments).
		msg = oneLine(msg)
	}
	fmt.Fprintf(stderr, "vessel-runtime: %s\n", msg)
	logError(g.log, g.logFormat, msg, time.Now())
	return code
}

func oneLine(s string) string {
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}

// logError appends msg to the log file in runc's format: logrus's text
// line, or the JSON object containerd reads back.
func logError(path, format, msg string, now time.Time) {
	logLine(path, format, "error", msg, now)
}

// logLine appends one line of the given level to the log file.
func logLine(path, format, level, msg string, now time.Time) {
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	f.Write(formatLog(format, level, msg, now))
}

// formatLog makes one log line.
func formatLog(format, level, msg string, now time.Time) []byte {
	ts := now.UTC().Format(time.RFC3339Nano)
	if format == "json" {
		b, _ := json.Marshal(struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
			Time  string `json:"time"`
		}{level, msg, ts})
		return append(b, '\n')
	}
	q, _ := json.Marshal(msg)
	return fmt.Appendf(nil, "time=%q level=%s msg=%s\n", ts, level, q)
}
