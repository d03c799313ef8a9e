package vmm

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// eventInterrupt is an edge-triggered interrupt line backed by a KVM irqfd:
// Trigger writes to the eventfd and the kernel injects the interrupt into
// the in-kernel IOAPIC/PIC without a VMM ioctl or vCPU exit.
type eventInterrupt struct {
	fd  int
	gsi uint32
	v   *VM
}

func (v *VM) newInterrupt(gsi uint32) (*eventInterrupt, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("vmm: eventfd for gsi %d: %w", gsi, err)
	}
	if err := v.vm.RegisterIRQFD(fd, gsi); err != nil {
		unix.Close(fd)
		return nil, err
	}
	i := &eventInterrupt{fd: fd, gsi: gsi, v: v}
	v.irqs = append(v.irqs, i)
	return i, nil
}

// Trigger injects one edge on the line.
func (i *eventInterrupt) Trigger() error {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], 1)
	if _, err := unix.Write(i.fd, b[:]); err != nil && err != unix.EAGAIN {
		return fmt.Errorf("vmm: trigger gsi %d: %w", i.gsi, err)
	}
	return nil
}

func (i *eventInterrupt) close() {
	if i.v.vm != nil {
		i.v.vm.UnregisterIRQFD(i.fd, i.gsi)
	}
	unix.Close(i.fd)
}
