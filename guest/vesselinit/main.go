// Command vesselinit is the init (PID 1) of vessel's guest initramfs.
//
// It mounts /proc, /sys, /dev and friends (u-root's libinit), brings up
// loopback and the network interfaces the host listed (static address or
// DHCP, see net.go), tells the VMM that init was reached (the boot-timer write on
// vessel's control port), runs the command the host passed on the kernel
// command line (guest/cmdline) — or an interactive shell when there is
// none — reaps orphans while it runs, and finally reports the command's
// exit status to the VMM and powers off. The VMM ends the VM as soon as the
// status arrives, so `vessel vm run -- CMD` exits with CMD's status.
//
// The binary is named vesselinit (not init) so it can sit beside u-root's
// commands in the initramfs; mkuimage makes /init point at it.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"

	"github.com/u-root/u-root/pkg/libinit"
	"github.com/u-root/u-root/pkg/memio"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/devices"
	"github.com/vesselvm/vessel/guest/cmdline"
)

// defaultShell runs when the host gave no command.
const defaultShell = "/bin/sh"

// rootfs is what init mounts and creates before running the command:
// the usual pseudo file systems, and cgroup v2 (what runc prefers) rather
// than libinit's cgroup v1 hierarchy.
var rootfs = []libinit.Creator{
	libinit.Dir{Name: "/dev", Mode: 0o755},
	libinit.Mount{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs"},
	libinit.Dir{Name: "/proc", Mode: 0o555},
	libinit.Mount{Source: "proc", Target: "/proc", FSType: "proc"},
	libinit.Dir{Name: "/sys", Mode: 0o555},
	libinit.Mount{Source: "sysfs", Target: "/sys", FSType: "sysfs"},
	libinit.Mount{Source: "cgroup2", Target: "/sys/fs/cgroup", FSType: "cgroup2"},
	libinit.Dir{Name: "/tmp", Mode: 0o1777},
	libinit.Mount{Source: "tmpfs", Target: "/tmp", FSType: "tmpfs"},
	libinit.Dir{Name: "/run", Mode: 0o755},
	libinit.Mount{Source: "tmpfs", Target: "/run", FSType: "tmpfs"},
	libinit.Dir{Name: "/dev/pts", Mode: 0o755},
	libinit.Mount{Source: "devpts", Target: "/dev/pts", FSType: "devpts", Opts: "newinstance,ptmxmode=666,gid=5,mode=620"},
	libinit.Symlink{NewPath: "/dev/ptmx", Target: "/dev/pts/ptmx"},
	libinit.Dir{Name: "/dev/shm", Mode: 0o1777},
	libinit.Mount{Source: "tmpfs", Target: "/dev/shm", FSType: "tmpfs"},
	libinit.Dir{Name: "/etc", Mode: 0o755},
}

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "vesselinit: not PID 1: this is the guest's init, run by the kernel")
		os.Exit(2)
	}
	libinit.SetEnv()
	libinit.Create(rootfs, false)
	libinit.NetInit()

	spec, err := readSpec()
	port := newControlPort(err == nil && spec.Control)
	port.bootMarker()

	status := 125
	if err != nil {
		fmt.Fprintf(os.Stderr, "vesselinit: %v\n", err)
	} else {
		configureNet(spec.Net)
		status = run(spec)
	}
	// The command's last output may still sit in the console's tty buffer,
	// sent by the UART as interrupts allow: wait until it has all left
	// (tcdrain) before telling the VMM, which then stops at once.
	unix.IoctlSetInt(int(os.Stdout.Fd()), unix.TCSBRK, 1)
	unix.Sync()
	port.exitStatus(status)
	// The VMM stops the VM on the status write; power off in case it
	// did not (not running under vessel).
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

// readSpec reads what the VMM asks for from the kernel command line.
func readSpec() (cmdline.Spec, error) {
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return cmdline.Spec{}, fmt.Errorf("read /proc/cmdline: %w", err)
	}
	return cmdline.Decode(string(raw))
}

// run executes the requested command and returns its exit status,
// following the shell's conventions: 128+N when killed by signal N, 127
// when the command does not exist, 126 when it cannot be executed.
func run(spec cmdline.Spec) int {
	if !spec.TTY {
		rawOutput(os.Stdout)
	}
	argv := spec.Argv
	if len(argv) == 0 {
		argv = []string{defaultShell}
	}

	// Catch (not ignore: an ignored disposition would survive exec into
	// the command) the signals whose Go default would make init exit, which
	// for PID 1 is a kernel panic. Caught signals revert to their defaults
	// in the command.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGINT, unix.SIGQUIT, unix.SIGTERM, unix.SIGHUP, unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU, unix.SIGPIPE)
	go func() {
		for range sigs {
		}
	}()

	path, err := exec.LookPath(argv[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "vesselinit: %s: command not found\n", argv[0])
		return 127
	}
	cmd := exec.Command(path, argv[1:]...)
	cmd.Args[0] = argv[0]
	if name := busyboxName(path); name != "" {
		cmd.Args[0] = name
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// A session of its own with the console as controlling terminal, so
	// job control and Ctrl-C work in an interactive shell.
	cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true, Setctty: spec.TTY, Ctty: 0}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "vesselinit: %s: %v\n", argv[0], err)
		if errors.Is(err, os.ErrPermission) {
			return 126
		}
		return 127
	}
	return reap(cmd.Process.Pid)
}

// busyboxName returns the command name u-root's busybox binary (bbin/bb)
// must see in argv[0] for path, when path reaches bb through symlinks such
// as /bin/sh -> ../bbin/gosh -> bb: bb dispatches on the name of the last
// link ("gosh"), and does not know the first one ("sh"). It returns ""
// for anything that is not a bb command.
func busyboxName(path string) string {
	p := path
	for range 8 {
		t, err := os.Readlink(p)
		if err != nil {
			return ""
		}
		if !filepath.IsAbs(t) {
			t = filepath.Join(filepath.Dir(p), t)
		}
		if filepath.Base(t) == "bb" {
			return filepath.Base(p)
		}
		p = t
	}
	return ""
}

// reap waits for every child, as PID 1 must (orphans are reparented to
// it), until pid exits, and returns pid's status.
func reap(pid int) int {
	for {
		var ws unix.WaitStatus
		p, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "vesselinit: wait: %v\n", err)
			return 125
		}
		if p != pid {
			continue
		}
		switch {
		case ws.Exited():
			return ws.ExitStatus()
		case ws.Signaled():
			return 128 + int(ws.Signal())
		}
	}
}

// rawOutput turns off output post-processing (ONLCR) on the console so
// that captured output keeps its bytes: "\n" stays "\n".
func rawOutput(f *os.File) {
	t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	if err != nil {
		return
	}
	t.Oflag &^= unix.OPOST
	unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t)
}

// controlPort talks to vessel's paravirtual control port with in/out
// instructions. I/O permission (iopl) is per thread, so every access runs
// on one locked OS thread that raised its own permission.
type controlPort struct {
	req chan func()
	ok  bool
}

func newControlPort(enabled bool) *controlPort {
	c := &controlPort{req: make(chan func())}
	if !enabled {
		return c
	}
	ready := make(chan bool)
	go func() {
		runtime.LockOSThread()
		if err := unix.Iopl(3); err != nil {
			ready <- false
			return
		}
		var magic memio.Uint32
		p := &memio.ArchPort{}
		if err := p.In(devices.ControlPortBase+devices.ControlMagicOffset, &magic); err != nil || uint32(magic) != devices.ControlMagic {
			ready <- false // not running under vessel
			return
		}
		ready <- true
		for f := range c.req {
			f()
		}
	}()
	c.ok = <-ready
	return c
}

func (c *controlPort) do(f func(p *memio.ArchPort)) {
	if !c.ok {
		return
	}
	done := make(chan struct{})
	c.req <- func() { f(&memio.ArchPort{}); close(done) }
	<-done
}

// bootMarker records "init reached" in the VMM's boot timer.
func (c *controlPort) bootMarker() {
	c.do(func(p *memio.ArchPort) {
		v := memio.Uint8(devices.BootMarkerInit)
		p.Out(devices.ControlPortBase+devices.ControlBootOffset, &v)
	})
}

// exitStatus reports the command's exit status; the VMM stops the VM.
func (c *controlPort) exitStatus(status int) {
	c.do(func(p *memio.ArchPort) {
		v := memio.Uint32(status)
		p.Out(devices.ControlPortBase+devices.ControlExitOffset, &v)
	})
}
