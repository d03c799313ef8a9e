package vmm

import (
	"errors"
	"fmt"
	"time"

	"github.com/vesselvm/vessel/kvm"
)

// Errors of Pause and Resume.
var (
	// ErrStopped is returned by Pause and Resume once the VM has ended.
	ErrStopped = errors.New("vmm: the VM has stopped")
	// ErrNotPaused is returned by Resume when the VM is not paused.
	ErrNotPaused = errors.New("vmm: the VM is not paused")
)

// Pause stops every vCPU: each is kicked out of KVM_RUN (as Stop does)
// and held outside it until Resume. Devices keep running on the host
// and keep their state; interrupts they raise wait in the in-kernel
// interrupt controller. Pausing a paused VM does nothing. Stop works on
// a paused VM. Pause returns once every vCPU is held, or an error (and
// the VM runs on) when one does not come out of KVM_RUN in time.
func (v *VM) Pause() error {
	v.pauseMu.Lock()
	select {
	case <-v.stopped:
		v.pauseMu.Unlock()
		return ErrStopped
	default:
	}
	if v.resume != nil {
		v.pauseMu.Unlock()
		return nil
	}
	v.resume = make(chan struct{})
	v.pauseMu.Unlock()
	for _, c := range v.vcpus {
		c.kick()
	}
	d := v.stopWait
	if d == 0 {
		d = stopWait
	}
	deadline := time.Now().Add(d)
	for !v.allParked() {
		select {
		case <-v.stopped:
			return ErrStopped
		default:
		}
		if time.Now().After(deadline) {
			v.Resume()
			return fmt.Errorf("vmm: pause: a vCPU did not leave the guest within %v", d)
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// Resume lets the vCPUs of a paused VM run again.
func (v *VM) Resume() error {
	v.pauseMu.Lock()
	defer v.pauseMu.Unlock()
	select {
	case <-v.stopped:
		return ErrStopped
	default:
	}
	if v.resume == nil {
		return ErrNotPaused
	}
	close(v.resume)
	v.resume = nil
	return nil
}

// Paused reports whether the VM is paused.
func (v *VM) Paused() bool {
	v.pauseMu.Lock()
	defer v.pauseMu.Unlock()
	return v.resume != nil
}

// allParked reports whether no vCPU can be in the guest: each is held
// by park, or its loop is not running (not started yet, it parks
// before it first enters; or ended).
func (v *VM) allParked() bool {
	for _, c := range v.vcpus {
		if !c.parked.Load() && c.tid.Load() != 0 {
			return false
		}
	}
	return true
}

// park holds the vCPU while the VM is paused. It reports whether it
// held it (the caller clears immediate_exit, which the pause's kick
// set, and checks for stop again) and returns early when the VM stops.
func (v *VM) park(c *vcpu) bool {
	v.pauseMu.Lock()
	resume := v.resume
	v.pauseMu.Unlock()
	if resume == nil {
		return false
	}
	if !v.settle(c) {
		return true // stopped or failed: the caller sees it
	}
	c.parked.Store(true)
	defer c.parked.Store(false)
	select {
	case <-resume:
	case <-v.stopped:
	}
	return true
}

// settleRuns bounds the KVM_RUN calls settle makes: each completes one
// exit of a string I/O instruction at most.
const settleRuns = 4096

// settle completes the I/O or MMIO access the vCPU's last exit left
// pending before it is held: KVM finishes it (an IN's data into the
// registers, say) only on the next KVM_RUN, and keeps it in no state a
// snapshot can read. api.rst (KVM_RUN, "Note: For KVM_EXIT_IO,
// KVM_EXIT_MMIO ..."): "userspace can re-enter the guest with an
// unmasked signal pending or with the immediate_exit field set to
// complete pending operations without allowing any further
// instructions to be executed". A string instruction may exit again
// for its next element: that exit is served and the vCPU re-entered.
// It reports false when the vCPU must not be held (the VM ended).
func (v *VM) settle(c *vcpu) bool {
	if c.kc == nil {
		return true // a vCPU of the pause gate's tests, with no KVM behind it
	}
	c.kc.SetImmediateExit(true)
	for i := 0; i < settleRuns; i++ {
		reason, err := c.kc.Run()
		if errors.Is(err, kvm.ErrInterrupted) {
			return true
		}
		if err != nil {
			v.fail(err)
			return false
		}
		v.exits.add(reason)
		if !c.handle(v, reason) {
			return false
		}
	}
	v.fail(fmt.Errorf("vmm: vCPU %d: still exiting after %d runs with immediate_exit set", c.kc.ID(), settleRuns))
	return false
}
