package virtio

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Event is an eventfd: the VMM hands its descriptor to KVM as an ioeventfd
// (a queue notification) or an irqfd, so the notification never becomes a
// userspace exit; a device goroutine waits on it through Go's poller.
type Event struct {
	f     *os.File
	fd    int
	count atomic.Uint64 // signals consumed by Wait
}

// NewEvent returns a non-blocking eventfd.
func NewEvent() (*Event, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("virtio: eventfd: %w", err)
	}
	// os.NewFile sees the non-blocking descriptor and uses the poller, so
	// a waiting goroutine holds no OS thread. f.Fd() is never called: it
	// would switch the descriptor back to blocking mode.
	return &Event{f: os.NewFile(uintptr(fd), "eventfd"), fd: fd}, nil
}

// Fd returns the descriptor for KVM_IOEVENTFD or KVM_IRQFD.
func (e *Event) Fd() int { return e.fd }

// Signal adds one to the counter, waking a waiter.
func (e *Event) Signal() error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 1)
	_, err := e.f.Write(b[:])
	return err
}

// Wait blocks until the counter is non-zero, then clears it and returns
// its value. It fails once the event is closed.
func (e *Event) Wait() (uint64, error) {
	var b [8]byte
	if _, err := e.f.Read(b[:]); err != nil {
		return 0, err
	}
	v := binary.LittleEndian.Uint64(b[:])
	e.count.Add(v)
	return v, nil
}

// Count returns the signals Wait has consumed so far: for a queue's
// ioeventfd, the driver's notifications.
func (e *Event) Count() uint64 { return e.count.Load() }

// Close releases the eventfd; a blocked Wait returns an error.
func (e *Event) Close() error { return e.f.Close() }
