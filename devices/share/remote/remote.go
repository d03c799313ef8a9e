// Package remote serves a VM's 9P shares from the vessel-share helper
// process (cmd/vessel-share, which runs package share's file server), so
// that the VMM, which holds the VM's KVM descriptors and guest memory,
// needs neither the file system calls of a file server nor the file
// capabilities it keeps, as virtiofsd does for QEMU. The VMM's virtio 9P
// device (virtio.P9) moves messages between the guest and a Server;
// each of the device's connections is a stream socket to the helper.
//
// The helper faces the guest and is not trusted: what it sends back is
// bounded by the device (virtio.P9 takes whole messages of at most 1
// MiB), and a helper that stops reading or answering holds up a
// connection's end (a device reset) for at most stallWait.
package remote

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/internal/helperproc"
	"github.com/vesselvm/vessel/internal/seccomp"
)

// HelperName is the helper's executable name.
const HelperName = "vessel-share"

// Share is one directory the helper serves.
type Share struct {
	Dir      string
	ReadOnly bool
}

// Config describes the shares of one VM.
type Config struct {
	Shares []Share
	// Helper is the vessel-share executable; empty means HelperName
	// next to the running executable, else on $PATH.
	Helper string
	// Credential, if set, is the user the helper runs as (a jailed
	// VMM's), keeping only Caps, in a network namespace of its own.
	// Files the guest creates then get the guest's owner, as they do
	// when a root VMM serves them itself.
	Credential *syscall.Credential
	// Caps are the capabilities a helper with Credential keeps: those a
	// file server needs to give files the guest's owners and reach
	// files of any owner below the share (jail.ShareCaps). A helper that
	// runs as root keeps the same.
	Caps []uintptr
}

// stallWait bounds how long a connection waits for the helper to take a
// request, or at its end to finish the requests it has. The helper reads
// each request as soon as it arrives (it serves them in goroutines), so
// only a helper that stopped makes a connection wait that long. (A
// variable for the tests.)
var stallWait = 30 * time.Second

// exitWait is how long Close waits for the helper to exit.
const exitWait = 5 * time.Second

// Helper is a running vessel-share process serving a VM's shares.
type Helper struct {
	cmd    *exec.Cmd
	ctl    *net.UnixConn
	exited chan struct{}
	mu     sync.Mutex // one connection's message at a time on ctl

	readyR    *os.File
	readyOnce sync.Once
	readyErr  error
}

// Start opens the shares' directories (a missing one is an error here,
// with the directory's name) and starts the helper with them, without
// waiting for it to be ready: the first connection does.
func Start(cfg Config) (_ *Helper, err error) {
	path, err := helperproc.Find(HelperName, cfg.Helper)
	if err != nil {
		return nil, fmt.Errorf("share: %w", err)
	}
	var child []*os.File
	defer func() {
		for _, f := range child {
			f.Close()
		}
	}()
	ctl, theirs, err := helperproc.Pair("share control")
	if err != nil {
		return nil, fmt.Errorf("share: %w", err)
	}
	child = append(child, theirs)
	h := &Helper{ctl: ctl, exited: make(chan struct{})}
	defer func() {
		if err != nil {
			h.ctl.Close()
		}
	}()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("share: %w", err)
	}
	defer func() {
		if err != nil {
			readyR.Close()
		}
	}()
	child = append(child, readyW)
	var ro []string
	for _, s := range cfg.Shares {
		fd, err := unix.Open(s.Dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("share %s: %w", s.Dir, err)
		}
		child = append(child, os.NewFile(uintptr(fd), s.Dir))
		ro = append(ro, strconv.FormatBool(s.ReadOnly))
	}
	args := []string{"-read-only", strings.Join(ro, ","), "-stderr-relayed"}
	spec := helperproc.Spec{Path: path, Files: child, Profile: seccomp.Share}
	if os.Geteuid() == 0 {
		// The guest's files get the guest's owners, and those without
		// one root's, also from a helper that runs as another user.
		args = append(args, "-chown")
	}
	if cfg.Credential != nil {
		// CAP_SETPCAP lets it take every other capability out of its
		// bounding set, then itself (jail.RestrictCaps).
		caps := append(cfg.Caps[:len(cfg.Caps):len(cfg.Caps)], unix.CAP_SETPCAP)
		spec.Credential, spec.AmbientCaps, spec.Cloneflags = cfg.Credential, caps, unix.CLONE_NEWNET
	}
	spec.Args = args
	h.cmd, err = helperproc.Start(spec)
	child = nil // Start closed them
	if err != nil {
		return nil, fmt.Errorf("share: %w", err)
	}
	go func() {
		h.cmd.Wait()
		close(h.exited)
	}()
	h.readyR = readyR
	return h, nil
}

// ready waits until the helper says it is ready, and returns why not if
// it failed or did not within helperproc.StartTimeout; later calls return the same.
func (h *Helper) ready() error {
	h.readyOnce.Do(func() {
		if err := helperproc.WaitReady(h.readyR, h.cmd, h.exited); err != nil {
			h.readyErr = fmt.Errorf("share: %w", err)
		}
		h.readyR.Close()
	})
	return h.readyErr
}

// Close ends the helper: it exits when its control socket closes, and is
// killed if it has not within exitWait.
func (h *Helper) Close() error {
	h.ctl.Close()
	select {
	case <-h.exited:
	case <-time.After(exitWait):
		h.cmd.Process.Kill()
		<-h.exited
	}
	return nil
}

// Server returns the 9P server of share i (in Config.Shares' order), for
// virtio.NewP9.
func (h *Helper) Server(i int) *Server { return &Server{h: h, share: uint32(i)} }

// Server is one share's 9P server in the helper (a virtio.P9Server).
type Server struct {
	h     *Helper
	share uint32
}

// connect gives the helper a new connection to the share and returns
// the VMM's end of it.
func (s *Server) connect() (*os.File, error) {
	if err := s.h.ready(); err != nil {
		return nil, err
	}
	// Non-blocking, for the poller: deadlines and Close end a blocked
	// read or write.
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("share: socketpair: %w", err)
	}
	var msg [4]byte
	binary.LittleEndian.PutUint32(msg[:], s.share)
	s.h.mu.Lock()
	_, _, err = s.h.ctl.WriteMsgUnix(msg[:], unix.UnixRights(fds[1]), nil)
	s.h.mu.Unlock()
	unix.Close(fds[1])
	if err != nil {
		unix.Close(fds[0])
		return nil, fmt.Errorf("share: %s is gone: %w", HelperName, err)
	}
	return os.NewFile(uintptr(fds[0]), "share connection"), nil
}

// Handle implements virtio.P9Server: the requests from t go to the
// helper, its replies to w, until t ends and the helper has answered
// what it had; a helper that stalls for stallWait ends the connection.
func (s *Server) Handle(t io.ReadCloser, w io.WriteCloser) error {
	defer t.Close()
	defer w.Close()
	conn, err := s.connect()
	if err != nil {
		return err
	}
	defer conn.Close()
	replies := make(chan error, 1)
	go func() {
		_, err := io.Copy(w, conn)
		replies <- err
	}()
	_, err = io.Copy(stallWriter{conn}, t)
	// No more requests: the helper finishes those it has, then closes
	// its end.
	if sc, e := conn.SyscallConn(); e == nil {
		sc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_WR) })
	}
	select {
	case rerr := <-replies:
		if err == nil {
			err = rerr
		}
	case <-time.After(stallWait):
		conn.Close() // ends the copy of the replies
		<-replies
		err = fmt.Errorf("share: %s did not finish a connection's requests within %v", HelperName, stallWait)
	}
	return err
}

// stallWriter writes to the helper's end of a connection, failing a write
// the helper does not take within stallWait.
type stallWriter struct{ f *os.File }

func (w stallWriter) Write(b []byte) (int, error) {
	w.f.SetWriteDeadline(time.Now().Add(stallWait))
	return w.f.Write(b)
}
