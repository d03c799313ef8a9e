package main

// The outer VM's init: this same binary, started by the kernel as PID 1 from
// the initramfs the host generated.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// isGuestInit reports whether this process is the outer VM's init.
func isGuestInit() bool {
	if os.Getpid() != 1 {
		return false
	}
	_, err := os.Stat(specPath)
	return err == nil
}

type guest struct {
	sp    *spec
	con   *os.File // the console (ttyS0): protocol lines and init's messages
	start time.Time
}

func (g *guest) logf(format string, args ...any) {
	if g.sp != nil && g.sp.Verbose {
		fmt.Fprintf(g.con, "testvm-init: [%6.3fs] %s\n", time.Since(g.start).Seconds(), fmt.Sprintf(format, args...))
	}
}

// line prints a protocol line on a line of its own and waits until the UART
// has sent it.
func (g *guest) line(s string) {
	fmt.Fprintf(g.con, "\n%s\n", s)
	_ = unix.IoctlSetInt(int(g.con.Fd()), unix.TCSBRK, 1) // tcdrain
}

// guestMain never returns: it ends by rebooting the outer VM, which makes
// QEMU (-no-reboot) exit.
func guestMain() {
	g := &guest{con: os.Stdout, start: time.Now()}
	defer func() {
		if r := recover(); r != nil {
			g.fail(fmt.Errorf("init panicked: %v", r))
		}
	}()
	b, err := os.ReadFile(specPath)
	if err == nil {
		g.sp, err = parseSpec(b)
	}
	if err != nil {
		fmt.Fprintf(g.con, "testvm-init: %v\n", err)
		g.halt()
	}
	// The nonce authenticates the exit line: don't leave it where the command could read it.
	_ = os.Remove(specPath)
	if t, err := unix.IoctlGetTermios(0, unix.TCGETS); err == nil {
		// The host's acknowledgement must not be echoed on the console.
		t.Lflag &^= unix.ECHO | unix.ECHONL
		_ = unix.IoctlSetTermios(0, unix.TCSETS, t)
	}
	g.logf("init started")
	status, outN, errN, err := g.run()
	if err != nil {
		g.fail(err)
	}
	g.line(exitLine(g.sp.Nonce, status, outN, errN))
	g.waitAck(20 * time.Second)
	g.halt()
}

func (g *guest) fail(err error) {
	if g.sp != nil {
		g.line(errorLine(g.sp.Nonce, err.Error()))
		g.waitAck(5 * time.Second)
	} else {
		fmt.Fprintf(g.con, "testvm-init: %v\n", err)
	}
	g.halt()
}

// waitAck waits until the host says it has received all output, so that
// nothing still queued in a virtqueue is lost when the VM goes away.
func (g *guest) waitAck(d time.Duration) {
	got := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if strings.Contains(sc.Text(), ackLine(g.sp.Nonce)) {
				close(got)
				return
			}
		}
	}()
	select {
	case <-got:
		g.logf("host acknowledged")
	case <-time.After(d):
		g.logf("no acknowledgement from the host after %v", d)
	}
}

// halt ends the outer VM. Without ACPI QEMU microvm has no power-off
// device, so a power-off request would return and the kernel would panic
// when init exits; a restart (triple fault, reboot=t) makes QEMU exit at
// once because of -no-reboot.
func (g *guest) halt() {
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	for {
		time.Sleep(time.Hour)
	}
}

// run sets up the root file system and runs the command.
func (g *guest) run() (status int, outN, errN int64, err error) {
	if err := g.setupRoot(); err != nil {
		return 0, 0, 0, err
	}
	stdout, stderr, err := g.openPorts()
	if err != nil {
		return 0, 0, 0, err
	}
	// Move the new root over the initramfs's / and chroot into it, as
	// switch_root does. After a plain chroot the initramfs would stay the
	// root of the mount namespace, and setns(2) into a mount namespace
	// copied from it lands there: runc exec (docker exec) failed with
	// "open /proc/self/fd: no such file or directory", nsenter -m found
	// no /bin/sh.
	if err := os.Chdir("/newroot"); err != nil {
		return 0, 0, 0, fmt.Errorf("new root: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return 0, 0, 0, fmt.Errorf("move the new root to /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return 0, 0, 0, fmt.Errorf("chroot: %w", err)
	}
	if err := os.Chdir(g.sp.Dir); err != nil {
		return 0, 0, 0, fmt.Errorf("working directory: %w", err)
	}
	g.setupMisc()
	g.logf("starting %q", g.sp.Argv)
	return g.runCommand(stdout, stderr)
}

func (g *guest) setupRoot() error {
	for _, d := range []string{"/host", "/rw", "/newroot"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("hostroot", "/host", "9p", unix.MS_RDONLY, g.sp.NineP); err != nil {
		return fmt.Errorf("mount host root over 9p (%s): %w", g.sp.NineP, err)
	}
	if err := unix.Mount("tmpfs", "/rw", "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs: %w", err)
	}
	for _, d := range []string{"/rw/upper", "/rw/work"} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("overlay", "/newroot", "overlay", 0, "lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work"); err != nil {
		return fmt.Errorf("mount overlayfs: %w", err)
	}
	g.logf("host root mounted")
	const nosuid, nodev, noexec = unix.MS_NOSUID, unix.MS_NODEV, unix.MS_NOEXEC
	mounts := []struct {
		src, dst, fs string
		flags        uintptr
		data         string
		optional     bool
	}{
		{"proc", "/proc", "proc", nosuid | nodev | noexec, "", false},
		{"sysfs", "/sys", "sysfs", nosuid | nodev | noexec, "", false},
		{"devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755", false},
		{"devpts", "/dev/pts", "devpts", nosuid | noexec, "mode=0620,ptmxmode=0666,gid=5", false},
		{"tmpfs", "/dev/shm", "tmpfs", nosuid | nodev, "mode=1777", false},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid | nodev | noexec, "", true},
	}
	for _, d := range g.sp.TmpfsDirs {
		mode := "mode=0755"
		if d == "/tmp" || d == "/var/tmp" {
			mode = "mode=1777"
		}
		mounts = append(mounts, struct {
			src, dst, fs string
			flags        uintptr
			data         string
			optional     bool
		}{"tmpfs", d, "tmpfs", nosuid | nodev, mode, false})
	}
	for _, m := range mounts {
		dst := "/newroot" + m.dst
		if err := os.MkdirAll(dst, 0o755); err != nil && !m.optional {
			return err
		}
		if err := unix.Mount(m.src, dst, m.fs, m.flags, m.data); err != nil {
			if m.optional {
				g.logf("mount %s on %s: %v (ignored)", m.fs, m.dst, err)
				continue
			}
			return fmt.Errorf("mount %s on %s: %w", m.fs, m.dst, err)
		}
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		_ = os.Symlink(target, "/newroot/dev/"+name)
	}
	// devtmpfs makes /dev/kvm root-only; the VM is throwaway, let any uid use it.
	_ = os.Chmod("/newroot/dev/kvm", 0o666)
	g.logf("file systems mounted")
	return nil
}

// openPorts finds the virtio-serial ports by name. The ports appear
// asynchronously (the host announces them over the control queue), so wait a little.
func (g *guest) openPorts() (stdout, stderr *os.File, err error) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		found := map[string]string{}
		ents, _ := os.ReadDir("/newroot/sys/class/virtio-ports")
		for _, e := range ents {
			b, err := os.ReadFile("/newroot/sys/class/virtio-ports/" + e.Name() + "/name")
			if err == nil {
				found[strings.TrimSpace(string(b))] = "/newroot/dev/" + e.Name()
			}
		}
		if found[stdoutPort] != "" && found[stderrPort] != "" {
			if stdout, err = os.OpenFile(found[stdoutPort], os.O_WRONLY, 0); err == nil {
				if stderr, err = os.OpenFile(found[stderrPort], os.O_WRONLY, 0); err == nil {
					g.logf("output ports open")
					return stdout, stderr, nil
				}
			}
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("not found (the outer kernel needs CONFIG_VIRTIO_CONSOLE)")
			}
			return nil, nil, fmt.Errorf("virtio-serial ports %s/%s: %w", stdoutPort, stderrPort, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// setupMisc does the best-effort parts: clock, hostname, loopback, umask.
func (g *guest) setupMisc() {
	// No RTC: take the host's clock, advanced by the time since boot.
	var up unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &up) == nil && g.sp.HostTimeNs > 0 {
		ts := unix.NsecToTimespec(g.sp.HostTimeNs + up.Nano())
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			g.logf("set clock: %v", err)
		}
	}
	if g.sp.Hostname != "" {
		_ = unix.Sethostname([]byte(g.sp.Hostname))
	}
	if err := loopbackUp(); err != nil {
		g.logf("loopback: %v", err)
	}
	unix.Umask(g.sp.Umask)
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// lookPath finds file like a shell would, using the command's PATH.
// It returns the status a shell would exit with when it fails (127 not
// found, 126 not executable).
func lookPath(file string, env []string) (string, int, error) {
	isExec := func(p string) error {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.IsDir() {
			return fmt.Errorf("is a directory")
		}
		if fi.Mode()&0o111 == 0 {
			return os.ErrPermission
		}
		return nil
	}
	if strings.Contains(file, "/") {
		if err := isExec(file); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return "", 127, fmt.Errorf("%s: no such file or directory", file)
			}
			return "", 126, fmt.Errorf("%s: %v", file, err)
		}
		return file, 0, nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		if isExec(p) == nil {
			return p, 0, nil
		}
	}
	return "", 127, fmt.Errorf("%s: command not found in PATH (%s)", file, path)
}

// countingCopy copies r to w, counting the bytes w accepted. After a write
// error it keeps draining r so the command never blocks on a full pipe.
func countingCopy(w io.Writer, r io.Reader, n *atomic.Int64) {
	buf := make([]byte, 64<<10)
	failed := false
	for {
		k, err := r.Read(buf)
		if k > 0 && !failed {
			m, werr := w.Write(buf[:k])
			n.Add(int64(m))
			failed = werr != nil
		}
		if err != nil {
			return
		}
	}
}

// alive prints aliveLine every aliveEvery until stop is closed: the host
// tells a wedged outer VM by their absence.
func (g *guest) alive(stop <-chan struct{}) {
	t := time.NewTicker(aliveEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			g.line(aliveLine(g.sp.Nonce))
		}
	}
}

func (g *guest) runCommand(stdout, stderr *os.File) (status int, outN, errN int64, err error) {
	var nOut, nErr atomic.Int64
	outR, outW, err := os.Pipe()
	if err != nil {
		return 0, 0, 0, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return 0, 0, 0, err
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); countingCopy(stdout, outR, &nOut) }()
	go func() { defer wg.Done(); countingCopy(stderr, errR, &nErr) }()
	copied := make(chan struct{})
	stopAlive := make(chan struct{})
	finish := func(st int) (int, int64, int64, error) {
		close(stopAlive)
		outW.Close()
		errW.Close()
		go func() { wg.Wait(); close(copied) }()
		select {
		case <-copied:
		case <-time.After(2 * time.Second):
			// Background processes the command left behind still hold the
			// pipes: the VM is going away, end them so the pipes drain.
			g.logf("command exited but its pipes are still open: killing all processes")
			_ = unix.Kill(-1, unix.SIGKILL)
			<-copied
		}
		return st, nOut.Load(), nErr.Load(), nil
	}

	g.line(startLine(g.sp.Nonce))
	go g.alive(stopAlive)
	path, st, lerr := lookPath(g.sp.Argv[0], g.sp.Env)
	if lerr != nil {
		fmt.Fprintf(errW, "testvm: %v\n", lerr)
		return finish(st)
	}
	devnull, err := os.Open("/dev/null")
	if err != nil {
		return 0, 0, 0, err
	}
	groups := make([]uint32, len(g.sp.Groups))
	for i, v := range g.sp.Groups {
		groups[i] = uint32(v)
	}
	pid, err := syscall.ForkExec(path, g.sp.Argv, &syscall.ProcAttr{
		Dir:   g.sp.Dir,
		Env:   g.sp.Env,
		Files: []uintptr{devnull.Fd(), outW.Fd(), errW.Fd()},
		Sys: &syscall.SysProcAttr{
			Setsid:     true,
			Credential: &syscall.Credential{Uid: uint32(g.sp.UID), Gid: uint32(g.sp.GID), Groups: groups},
		},
	})
	devnull.Close()
	if err != nil {
		st := 126
		if errors.Is(err, syscall.ENOENT) {
			st = 127
		}
		fmt.Fprintf(errW, "testvm: cannot run %s: %v\n", path, err)
		return finish(st)
	}
	// As PID 1 we also reap the orphans the command leaves behind.
	for {
		var ws unix.WaitStatus
		wpid, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, 0, 0, fmt.Errorf("wait: %w", err)
		}
		if wpid != pid {
			continue
		}
		switch {
		case ws.Exited():
			st = ws.ExitStatus()
		case ws.Signaled():
			st = 128 + int(ws.Signal())
		default:
			continue
		}
		g.logf("command exited with status %d", st)
		return finish(st)
	}
}
