package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/console"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/vesselvm/vessel/guest/agentproto"
	"github.com/vesselvm/vessel/internal/fdpass"
)

// A container's terminal (process.terminal) is two ptys in a row: the
// guest's runc gives the process one in the VM, whose master the agent
// streams to the host (agentproto.TTY); on the host, vessel-runtime makes
// another, whose master goes to the client (over --console-socket, as
// runc sends its own) and whose slave the VMM process (or, for exec, the
// exec helper) holds as its controlling terminal, copying between it and
// the stream. The host slave is raw, so that only the guest's line
// discipline acts (one echo, one newline translation). A window size the
// client sets on the master reaches the holder of the slave as SIGWINCH,
// which passes the slave's new size on to the guest's pty (OpResize).

// checkTerminal is runc's check of a process's terminal against the
// console socket: a terminal needs a console socket when vessel-runtime
// does not stay (create, run -d, exec -d), and a console socket needs
// both.
func checkTerminal(terminal, detach bool, consoleSocket string) error {
	if detach && terminal && consoleSocket == "" {
		return errorf("cannot allocate tty if runc will detach without setting console socket")
	}
	if (!detach || !terminal) && consoleSocket != "" {
		return errorf("cannot use console socket if runc will not detach or allocate tty")
	}
	return nil
}

// hostPty is the host's pty of a terminal.
type hostPty struct {
	master console.Console
	slave  *os.File
}

// newHostPty makes a pty whose slave is raw, of size box if given.
func newHostPty(box *specs.Box) (*hostPty, error) {
	m, name, err := console.NewPty()
	if err != nil {
		return nil, fmt.Errorf("pty: %w", err)
	}
	s, err := os.OpenFile(name, os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("pty slave %s: %w", name, err)
	}
	// The slave lives on the host's /dev/pts (runc's is in the
	// container's): only its owner may open it, not the tty group,
	// whose members could write into the client's terminal.
	if err := s.Chmod(0o600); err != nil {
		m.Close()
		s.Close()
		return nil, fmt.Errorf("pty slave %s: %w", name, err)
	}
	if _, err := term.MakeRaw(int(s.Fd())); err != nil {
		m.Close()
		s.Close()
		return nil, fmt.Errorf("pty slave %s: %w", name, err)
	}
	if box != nil && box.Width > 0 && box.Height > 0 && box.Width <= 0xffff && box.Height <= 0xffff {
		m.Resize(console.WinSize{Width: uint16(box.Width), Height: uint16(box.Height)})
	}
	return &hostPty{master: m, slave: s}, nil
}

// close closes what is still open of the pty here.
func (p *hostPty) close() {
	if p == nil {
		return
	}
	p.master.Close()
	if p.slave != nil {
		p.slave.Close()
	}
}

// dialConsole connects to the client's console socket, before anything
// is made, so that a bad path fails first.
func dialConsole(path string) (*net.UnixConn, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, errorf("--console-socket: %v", err)
	}
	return c, nil
}

// sendFd sends f over c as runc's utils.SendFd does: one message whose
// data is name and whose one SCM_RIGHTS control message holds f's
// descriptor (go-runc's ReceiveMaster and conmon expect exactly one).
func sendFd(c *net.UnixConn, name string, f interface{ Fd() uintptr }) error {
	if name == "" || len(name) >= 4096 {
		return fmt.Errorf("send a descriptor: name of %d bytes", len(name))
	}
	return fdpass.Send(c, []byte(name), f)
}

// sendConsole gives the client the pty's master and closes the
// connection.
func sendConsole(c *net.UnixConn, p *hostPty) error {
	defer c.Close()
	if err := sendFd(c, p.master.Name(), p.master); err != nil {
		return errorf("--console-socket: %v", err)
	}
	return nil
}

// winSize returns the size of the terminal fd, if it is one with a size.
func winSize(fd int) (*specs.Box, bool) {
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 || ws.Row == 0 {
		return nil, false
	}
	return &specs.Box{Width: uint(ws.Col), Height: uint(ws.Row)}, true
}

// attachTTY is attach for a container with a terminal: the VMM
// process's fd 0 is the host pty's slave (its controlling terminal,
// raw), which it joins to the guest's TTY stream, and each SIGWINCH
// passes the slave's size on to the guest.
func (p *vmmProc) attachTTY(ctx context.Context) error {
	if err := p.joinTTY(ctx, p.id, os.Stdin, os.Stdout, &outputs); err != nil {
		return err
	}
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	winch <- syscall.SIGWINCH // the size the client may have set already
	go func() {
		for range winch {
			box, ok := winSize(0)
			if !ok {
				continue
			}
			rctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
			_, err := p.ag.Call(rctx, agentproto.Request{Op: agentproto.OpResize, Container: p.id, Size: box})
			cancel()
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				p.logf("resize the container's terminal: %v", err)
			}
		}
	}()
	return nil
}

// joinTTY copies between a host pty's slave (in and out) and container
// id's TTY stream; wg counts the output's copy.
func (p *vmmProc) joinTTY(ctx context.Context, id string, in io.Reader, out io.Writer, outs *outputSet) error {
	c, err := p.ag.Stream(ctx, agentproto.StreamID{Container: id, Name: agentproto.TTY})
	if err != nil {
		return p.guestFailure("the container's terminal", err)
	}
	go io.Copy(c, in) // ends with EIO when the client closes the master
	outs.copy(out, c) // ends when the guest closes the stream: the process exited
	return nil
}

// foregroundTTY is run's terminal without a console socket, as runc's:
// vessel-runtime's own stdio is the terminal. Its stdin goes raw (when
// a terminal), is copied to the master, the master's output to stdout,
// and its window size follows stdin's. The returned function restores
// stdin and waits (briefly) for the last output, after the VMM process
// has exited.
func foregroundTTY(p *hostPty) (finish func()) {
	in := int(os.Stdin.Fd())
	var old *term.State
	if term.IsTerminal(in) {
		old, _ = term.MakeRaw(in)
	}
	resize := func() {
		if box, ok := winSize(in); ok {
			p.master.Resize(console.WinSize{Width: uint16(box.Width), Height: uint16(box.Height)})
		}
	}
	resize()
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	go func() {
		for range winch {
			resize()
		}
	}()
	go io.Copy(p.master, os.Stdin)
	done := make(chan struct{})
	go func() {
		io.Copy(os.Stdout, p.master) // EIO once every holder of the slave is gone
		close(done)
	}()
	return func() {
		signal.Stop(winch)
		<-done
		if old != nil {
			term.Restore(in, old)
		}
	}
}
