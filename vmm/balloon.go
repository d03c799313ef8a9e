package vmm

import (
	"errors"
	"fmt"
	"time"

	"github.com/vesselvm/vessel/devices/virtio"
)

// Balloon configures a VM's virtio-balloon device.
type Balloon struct {
	// TargetMiB is how much memory the guest is asked to give up at
	// start (SetBalloon changes it).
	TargetMiB uint64
	// DeflateOnOOM lets the guest take memory back from the balloon
	// rather than kill a process when it runs out.
	DeflateOnOOM bool
	// Reporting asks the guest to report the memory it frees, which the
	// VMM then returns to the host (free page reporting).
	Reporting bool
	// StatsInterval is how often the guest's memory statistics are
	// refreshed; 0 reads them once, when the driver starts.
	StatsInterval time.Duration
}

// ErrNoBalloon is returned by the balloon methods of a VM without one.
var ErrNoBalloon = errors.New("vmm: the VM has no balloon device")

// addBalloon attaches the balloon device.
func (v *VM) addBalloon(b *Balloon) error {
	pages, err := balloonPages(b.TargetMiB, v.cfg.Memory)
	if err != nil {
		return err
	}
	dev := virtio.NewBalloon(virtio.BalloonConfig{DeflateOnOOM: b.DeflateOnOOM, Reporting: b.Reporting, StatsInterval: b.StatsInterval})
	dev.SetTarget(pages)
	if err := v.addVirtio(dev, nil); err != nil {
		return err
	}
	v.balloon = dev
	return nil
}

// balloonPages converts a target in MiB to the device's 4 KiB pages; the
// target cannot exceed the VM's memory.
func balloonPages(mib, memory uint64) (uint32, error) {
	if mib > memory>>20 {
		return 0, fmt.Errorf("%w: balloon target %d MiB is more than the VM's %d MiB", ErrInvalidConfig, mib, memory>>20)
	}
	return uint32(mib << 20 >> 12), nil
}

// SetBalloon asks the guest to hold mib MiB in its balloon (inflate) or
// to take memory back (deflate). The guest's driver answers on its own
// time; BalloonState says how far it got.
func (v *VM) SetBalloon(mib uint64) error {
	if v.balloon == nil {
		return ErrNoBalloon
	}
	pages, err := balloonPages(mib, v.cfg.Memory)
	if err != nil {
		return err
	}
	v.balloon.SetTarget(pages)
	return nil
}

// BalloonState returns the balloon's target and the guest's answer, the
// memory given back to the host and the guest's last memory statistics.
func (v *VM) BalloonState() (virtio.BalloonState, error) {
	if v.balloon == nil {
		return virtio.BalloonState{}, ErrNoBalloon
	}
	return v.balloon.State(), nil
}

// BalloonConfig returns the balloon's configuration, with its current
// target.
func (v *VM) BalloonConfig() (Balloon, error) {
	if v.balloon == nil {
		return Balloon{}, ErrNoBalloon
	}
	c := *v.cfg.Balloon
	c.TargetMiB = uint64(v.balloon.State().TargetPages) << 12 >> 20
	return c, nil
}

// FreePageReporting is the balloon of a container's VM (vessel run,
// vessel-runtime): never inflated, it returns to the host the memory the
// guest frees, so that what a container used and freed does not stay
// with the VMM.
func FreePageReporting() *Balloon { return &Balloon{Reporting: true, DeflateOnOOM: true} }
