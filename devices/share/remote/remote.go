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
// connection's end (a device reset) for at most endWait.
package remote

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/internal/fdpass"
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
	h.readyOnce.Do(func() {
		h.readyErr = fmt.Errorf("share: %s closed", HelperName)
		h.readyR.Close()
	})
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
	theirs := os.NewFile(uintptr(fds[1]), "share connection")
	defer theirs.Close()
	// Bounded: a helper that stops reading its control socket fills
	// it, and a write without a limit would then hold this device's
	// reset, and every share's next connection, for good.
	s.h.mu.Lock()
	s.h.ctl.SetWriteDeadline(time.Now().Add(stallWait))
	err = fdpass.Send(s.h.ctl, binary.LittleEndian.AppendUint32(nil, s.share), theirs)
	s.h.ctl.SetWriteDeadline(time.Time{})
	s.h.mu.Unlock()
	if err != nil {
		unix.Close(fds[0])
		return nil, fmt.Errorf("share: %s is gone: %w", HelperName, err)
	}
	return os.NewFile(uintptr(fds[0]), "share connection"), nil
}

// Handle implements virtio.P9Server: the requests from t go to the
// helper, its replies to w, until t ends (or, where t has a Done channel,
// as virtio.P9's has, the connection ends: a device reset) and the
// helper has answered what it had. A helper that stalls a request for
// stallWait ends the connection, and one that is not done endWait after
// the connection's end is cut off.
func (s *Server) Handle(t io.ReadCloser, w io.WriteCloser) error {
	defer t.Close()
	defer w.Close()
	conn, err := s.connect()
	if err != nil {
		return err
	}
	defer conn.Close()
	c := &helperConn{f: conn}
	replies := make(chan error, 1)
	go func() {
		_, err := io.Copy(w, conn)
		replies <- err
	}()
	if d, ok := t.(interface{ Done() <-chan struct{} }); ok {
		finished := make(chan struct{})
		defer close(finished)
		go func() {
			select {
			case <-d.Done():
				c.end()
			case <-finished:
			}
		}()
	}
	_, err = io.Copy(c, t)
	// No more requests: the helper finishes those it has, then closes
	// its end.
	c.end()
	if sc, e := conn.SyscallConn(); e == nil {
		sc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_WR) })
	}
	rerr := <-replies
	if errors.Is(rerr, os.ErrDeadlineExceeded) {
		rerr = fmt.Errorf("share: %s did not finish a connection's requests within %v of its end", HelperName, endWait)
	}
	if err == nil {
		err = rerr
	}
	return err
}

// endWait is how long the helper has to finish a connection's requests
// once the connection ended: less than the VMM waits for a device to stop
// (vmm's stopWait), so that a helper cannot make the VM stuck.
const endWait = 5 * time.Second

// helperConn is the VMM's end of a connection to the helper: each write
// fails if the helper does not take it within stallWait, and everything
// fails endWait after end.
type helperConn struct {
	f     *os.File
	ended atomic.Bool
}

// end sets the connection's last moment, once.
func (c *helperConn) end() {
	if !c.ended.Swap(true) {
		c.f.SetDeadline(time.Now().Add(endWait))
	}
}

func (c *helperConn) Write(b []byte) (int, error) {
	if !c.ended.Load() {
		c.f.SetWriteDeadline(time.Now().Add(stallWait))
		if c.ended.Load() { // end ran meanwhile: its deadline stands
			c.f.SetWriteDeadline(time.Now().Add(endWait))
		}
	}
	return c.f.Write(b)
}
