package vmm

import (
	"fmt"

	"github.com/vesselvm/vessel/devices/virtio"
)

// eventInterrupt is an edge-triggered interrupt line backed by a KVM irqfd:
// Trigger signals the eventfd and the kernel injects the interrupt into
// the in-kernel IOAPIC without a VMM ioctl or vCPU exit.
type eventInterrupt struct {
	ev  *virtio.Event
	gsi uint32
	v   *VM
}

func (v *VM) newInterrupt(gsi uint32) (*eventInterrupt, error) {
	ev, err := virtio.NewEvent()
	if err != nil {
		return nil, fmt.Errorf("vmm: gsi %d: %w", gsi, err)
	}
	if err := v.vm.RegisterIRQFD(ev.Fd(), gsi); err != nil {
		ev.Close()
		return nil, err
	}
	i := &eventInterrupt{ev: ev, gsi: gsi, v: v}
	v.irqs = append(v.irqs, i)
	return i, nil
}

// Trigger injects one edge on the line.
func (i *eventInterrupt) Trigger() error {
	if err := i.ev.Signal(); err != nil {
		return fmt.Errorf("vmm: trigger gsi %d: %w", i.gsi, err)
	}
	return nil
}

func (i *eventInterrupt) close() {
	if i.v.vm != nil {
		i.v.vm.UnregisterIRQFD(i.ev.Fd(), i.gsi)
	}
	i.ev.Close()
}
