// Package helperproc starts the processes a VMM hands the parts that
// face the guest and need what the VMM should not have to: the user
// network's helper (vessel-usernet, a network stack) and the shares'
// file server (vessel-share, file system calls and file capabilities).
// It finds their executables, starts them with their descriptors as the
// jail's user, and relays their standard error.
package helperproc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/internal/limitio"
	"github.com/vesselvm/vessel/internal/seccomp"
)

// Find returns the path of the helper executable name: path if set, else
// name next to the running executable, else name on $PATH.
func Find(name, path string) (string, error) {
	if path != "" {
		return path, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("no %s next to vessel or on $PATH (make builds it into bin/)", name)
	}
	return p, nil
}

// Spec is a helper to start.
type Spec struct {
	// Path is its executable (Find), Args its arguments.
	Path string
	Args []string
	// Files are its descriptors from 3 on, closed by Start whatever
	// happens.
	Files []*os.File
	// Credential, if set, is the user it runs as: a jailed VMM's. It is
	// then started from a descriptor of its executable, which that user
	// may not reach by path.
	Credential *syscall.Credential
	// AmbientCaps are capabilities it keeps across the change of user.
	AmbientCaps []uintptr
	// Cloneflags are namespaces it gets of its own.
	Cloneflags uintptr
	// Profile is its seccomp filter's, which names it in the line that
	// replaces a report of a call outside the filter.
	Profile seccomp.Profile
}

// StderrLimit bounds what a helper's standard error may put on the VMM's:
// a helper faces the guest, and one the guest took over must not fill
// the user's terminal or vessel-runtime's log. Its own messages are a
// few lines.
const StderrLimit = 64 << 10

// Start starts the helper in its own process group (the terminal's
// SIGINT is for vessel) with "/" as its working directory (a directory
// the jail's pivot_root moves along with the VMM's), and relays its
// standard error to this process's (RelayStderr).
func Start(s Spec) (*exec.Cmd, error) {
	files := s.Files
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	cmd := exec.Command(s.Path, s.Args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Cloneflags: s.Cloneflags, AmbientCaps: s.AmbientCaps}
	if s.Credential != nil {
		// The descriptor stays close-on-exec: the kernel opens
		// /proc/self/fd/N before it closes such descriptors, and the
		// helper does not keep a descriptor of a host file outside its
		// jail. Its number is above every one the child's descriptor
		// shuffle uses (at most twice the descriptors it gets), which
		// would overwrite it.
		exe, err := os.Open(s.Path)
		if err != nil {
			return nil, err
		}
		fd, err := unix.FcntlInt(exe.Fd(), unix.F_DUPFD_CLOEXEC, 2*(3+len(files))+8)
		exe.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Path, err)
		}
		defer unix.Close(fd)
		cmd.Path = fmt.Sprintf("/proc/self/fd/%d", fd)
		cmd.SysProcAttr.Credential = s.Credential
	}
	cmd.Dir = "/"
	cmd.ExtraFiles = files
	// Made last: nothing between it and Start returns without closing
	// both ends.
	errR, errW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = errW
	err = cmd.Start()
	errW.Close()
	if err != nil {
		errR.Close()
		return nil, err
	}
	// A helper the guest took over that fills the memory it shares
	// with its VM (the jail's cgroup) is the one the OOM killer picks.
	// Best effort: raising it needs no privilege over one's own child.
	os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", cmd.Process.Pid), []byte("1000"), 0)
	go RelayStderr(errR, os.Stderr, s.Profile)
	return cmd, nil
}

// RelayStderr passes a helper's standard error r on to w (this
// process's) until the helper ends, with a crash report for a call
// outside its filter replaced by one line (seccomp.Relay), and at most
// StderrLimit bytes of the rest; the report's line comes whatever came
// before it.
func RelayStderr(r io.ReadCloser, w io.Writer, p seccomp.Profile) {
	defer r.Close()
	lw := limitio.Writer(w, StderrLimit, fmt.Sprintf("vessel: further output of the %s suppressed\n", p))
	if line := seccomp.Relay(r, lw, p.String()); line != "" {
		fmt.Fprintln(w, line)
	}
}

// Pair makes a SOCK_SEQPACKET socket pair: the VMM's end, and the
// helper's for Spec.Files. name names both in errors.
func Pair(name string) (*net.UnixConn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: socketpair: %w", name, err)
	}
	theirs := os.NewFile(uintptr(fds[1]), name)
	f := os.NewFile(uintptr(fds[0]), name)
	defer f.Close() // FileConn works on its own duplicate
	c, err := net.FileConn(f)
	if err != nil {
		theirs.Close()
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	return c.(*net.UnixConn), theirs, nil
}

// StartTimeout bounds a helper's start-up (slow only under emulation).
const StartTimeout = time.Minute

// WaitReady reads what a helper writes on its ready pipe r: "ok" (nil),
// or one line saying why it failed. A helper that says nothing within
// StartTimeout, or exits without a word (exited closes once the caller's
// cmd.Wait returned), is an error too.
func WaitReady(r *os.File, cmd *exec.Cmd, exited <-chan struct{}) error {
	name := filepath.Base(cmd.Args[0])
	r.SetReadDeadline(time.Now().Add(StartTimeout))
	b, err := io.ReadAll(io.LimitReader(r, 4096))
	msg := string(bytes.TrimSpace(b))
	switch {
	case msg == "ok":
		return nil
	case msg != "":
		return fmt.Errorf("%s: %s", name, msg)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%s did not start within %v", name, StartTimeout)
	}
	<-exited
	return fmt.Errorf("%s: %v", name, cmd.ProcessState)
}
