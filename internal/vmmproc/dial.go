package vmmproc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/devices/virtio"
	"github.com/vesselvm/vessel/internal/fdpass"
)

// A jailed VMM sees none of the host's names, so guest vsock connections
// to the host, which dial "<uds>_<port>", are dialled by vessel for it:
// on a SOCK_SEQPACKET pair the VMM sends the port (4 bytes, big endian)
// and vessel answers one byte, 0 with the connection's descriptor
// (SCM_RIGHTS) or 1 when nobody listens. The VMM needs no bind mount,
// and the host program's socket no permission for the jail's user.

// DialPair makes the pair: vessel's end and the VMM's (its fd 5).
func DialPair() (ours *net.UnixConn, theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	f := os.NewFile(uintptr(fds[0]), "vsock dials")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return c.(*net.UnixConn), os.NewFile(uintptr(fds[1]), "vsock dials"), nil
}

// ServeDials answers the VMM's requests on c until it closes its end,
// dialling uds_<port> for each.
func ServeDials(c *net.UnixConn, uds string) {
	defer c.Close()
	buf := make([]byte, 16)
	for {
		n, err := c.Read(buf)
		if err != nil || n != 4 {
			return
		}
		port := binary.BigEndian.Uint32(buf)
		if err := answerDial(c, fmt.Sprintf("%s_%d", uds, port)); err != nil {
			return
		}
	}
}

func answerDial(c *net.UnixConn, path string) error {
	conn, err := virtio.DialSocket(path)
	if err != nil {
		_, err := c.Write([]byte{1})
		return err
	}
	f, err := conn.File()
	conn.Close()
	if err != nil {
		_, err := c.Write([]byte{1})
		return err
	}
	defer f.Close()
	return fdpass.Send(c, []byte{0}, f)
}

// vsockBroker is the VMM's end: its dial is the vsock device's dialer.
type vsockBroker struct {
	mu sync.Mutex // one request and its answer at a time
	c  *net.UnixConn
}

func newVsockBroker(f *os.File) (*vsockBroker, error) {
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("vsock dials: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("vsock dials: not a Unix socket")
	}
	return &vsockBroker{c: uc}, nil
}

// errNoListener is a port nobody listens on.
var errNoListener = errors.New("no host listener")

func (b *vsockBroker) dial(port uint32) (*net.UnixConn, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var req [4]byte
	binary.BigEndian.PutUint32(req[:], port)
	if _, err := b.c.Write(req[:]); err != nil {
		return nil, err
	}
	msg, files, err := fdpass.Recv(b.c, 1, 1)
	if err != nil {
		return nil, err
	}
	if len(msg) != 1 || msg[0] != 0 || len(files) != 1 {
		fdpass.Close(files)
		return nil, fmt.Errorf("vsock port %d: %w", port, errNoListener)
	}
	defer files[0].Close()
	c, err := net.FileConn(files[0])
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("vsock dials: not a Unix connection")
	}
	return uc, nil
}
