// Package tap is a virtio-net backend on a Linux TAP device
// (Documentation/networking/tuntap.rst): frames carry the virtio-net
// header (IFF_VNET_HDR), so checksum and segmentation offloads pass
// between the guest driver and the host kernel untouched.
package tap

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/devices/virtio"
)

// vnetHdrSize is the header the device exchanges with the guest: struct
// virtio_net_hdr_v1 (virtio 1.2 §5.1.6), whose num_buffers field the TAP
// device skips over.
const vnetHdrSize = 12

// Guest offload feature bits (virtio 1.2 §5.1.3), mapped to TUNSETOFFLOAD
// flags.
const (
	featGuestCsum = 1 << 1
	featGuestTSO4 = 1 << 7
	featGuestTSO6 = 1 << 8
)

// ErrBusy is returned when another process holds the TAP device.
var ErrBusy = errors.New("in use by another process")

// Tap is an open TAP device.
type Tap struct {
	name string
	f    *os.File
	fd   int
}

// Open attaches to the TAP device name, creating it when it does not
// exist (that needs CAP_NET_ADMIN; a device created here disappears when
// it is closed, a persistent one made with `ip tuntap add` stays).
func Open(name string) (*Tap, error) {
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tap: bad interface name %q (1 to %d bytes)", name, unix.IFNAMSIZ-1)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.EACCES) {
		return nil, fmt.Errorf("tap %s: open /dev/net/tun: not permitted (a TAP device needs CAP_NET_ADMIN, or read-write access to /dev/net/tun and a device made for this user with `ip tuntap add %s mode tap user USER`): %w", name, name, err)
	}
	if err != nil {
		return nil, fmt.Errorf("tap %s: open /dev/net/tun: %w", name, err)
	}
	t := &Tap{name: name, fd: fd}
	if err := t.setup(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	// A non-blocking character device joins Go's poller: reads and
	// writes wait there, and deadlines interrupt them.
	t.f = os.NewFile(uintptr(fd), "tap "+name)
	return t, nil
}

func (t *Tap) setup() error {
	ifr, err := unix.NewIfreq(t.name)
	if err != nil {
		return fmt.Errorf("tap %s: %w", t.name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(t.fd, unix.TUNSETIFF, ifr); err != nil {
		switch {
		case errors.Is(err, unix.EBUSY):
			return fmt.Errorf("tap %s: %w", t.name, ErrBusy)
		case errors.Is(err, unix.EPERM):
			return fmt.Errorf("tap %s: not permitted (creating a TAP device needs CAP_NET_ADMIN; or create it for this user with `ip tuntap add %s mode tap user USER`): %w", t.name, t.name, err)
		case errors.Is(err, unix.EINVAL):
			return fmt.Errorf("tap %s: the interface exists and is not a TAP device: %w", t.name, err)
		}
		return fmt.Errorf("tap %s: TUNSETIFF: %w", t.name, err)
	}
	if err := unix.IoctlSetPointerInt(t.fd, unix.TUNSETVNETHDRSZ, vnetHdrSize); err != nil {
		return fmt.Errorf("tap %s: TUNSETVNETHDRSZ: %w", t.name, err)
	}
	// No offloads until the guest driver says what it takes.
	if err := unix.IoctlSetInt(t.fd, unix.TUNSETOFFLOAD, 0); err != nil {
		return fmt.Errorf("tap %s: TUNSETOFFLOAD: %w", t.name, err)
	}
	return nil
}

// Name returns the interface name.
func (t *Tap) Name() string { return t.name }

// VnetHdr implements virtio.NetBackend: frames carry the virtio-net
// header.
func (t *Tap) VnetHdr() bool { return true }

// SetOffloads implements virtio.NetBackend: the TAP device may hand over
// packets with partial checksums and large (TSO) packets only when the
// guest driver accepted them.
func (t *Tap) SetOffloads(features uint64) error {
	var flags int
	if features&featGuestCsum != 0 {
		flags |= unix.TUN_F_CSUM
		if features&featGuestTSO4 != 0 {
			flags |= unix.TUN_F_TSO4
		}
		if features&featGuestTSO6 != 0 {
			flags |= unix.TUN_F_TSO6
		}
	}
	if err := unix.IoctlSetInt(t.fd, unix.TUNSETOFFLOAD, flags); err != nil {
		return fmt.Errorf("tap %s: TUNSETOFFLOAD %#x: %w", t.name, flags, err)
	}
	return nil
}

// ReadFrame implements virtio.NetBackend.
func (t *Tap) ReadFrame(b []byte) (int, error) { return t.f.Read(b) }

// TryReadFrame implements virtio.NetTryReader: one read(2) of the
// non-blocking descriptor, through Go's poller so that a passed deadline
// still ends it.
func (t *Tap) TryReadFrame(b []byte) (int, bool, error) {
	return virtio.TryRead(t.f, b)
}

// WriteFrame implements virtio.NetBackend: one writev per frame, which the
// TAP device takes whole (it never writes part of a packet). While the
// interface is down the kernel refuses frames with EIO: that is
// virtio.ErrNetDown.
func (t *Tap) WriteFrame(bufs [][]byte) error {
	raw, err := t.f.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	err = raw.Write(func(fd uintptr) bool {
		for {
			_, werr = unix.Writev(int(fd), bufs)
			if werr != unix.EINTR {
				return werr != unix.EAGAIN
			}
		}
	})
	if err != nil {
		return err
	}
	if werr == unix.EIO {
		return fmt.Errorf("tap %s: %w", t.name, virtio.ErrNetDown)
	}
	return werr
}

// SetDeadline implements virtio.NetBackend.
func (t *Tap) SetDeadline(d time.Time) error { return t.f.SetDeadline(d) }

// Close detaches from the device (which the kernel removes unless it is
// persistent).
func (t *Tap) Close() error { return t.f.Close() }
