package vmm

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vesselvm/vessel/kvm"
)

// TestPauseGate drives the pause gate the vCPU loops go through, without
// KVM: a vCPU that reaches park while paused is held (and counted as
// parked) until Resume, or until the VM stops; Resume of a running VM
// and Pause or Resume of a stopped one fail.
func TestPauseGate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		release func(v *VM) error // ends the pause
	}{
		{"resume", func(v *VM) error { return v.Resume() }},
		{"stop while paused", func(v *VM) error { v.Stop(); return nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := &VM{stopped: make(chan struct{})}
			c := &vcpu{}
			if v.park(c) {
				t.Fatal("park held a vCPU of a running VM")
			}
			if err := v.Resume(); !errors.Is(err, ErrNotPaused) {
				t.Fatalf("Resume of a running VM: %v, want ErrNotPaused", err)
			}
			if err := v.Pause(); err != nil {
				t.Fatal(err)
			}
			if err := v.Pause(); err != nil || !v.Paused() {
				t.Fatalf("second Pause: %v, paused %v", err, v.Paused())
			}
			// The vCPU joins after Pause (whose kick needs KVM); its loop
			// runs: it counts as parked once park holds it.
			v.vcpus = []*vcpu{c}
			c.tid.Store(1)
			if v.allParked() {
				t.Fatal("a running vCPU counted as parked")
			}
			held := make(chan bool)
			go func() { held <- v.park(c) }()
			deadline := time.Now().Add(5 * time.Second)
			for !v.allParked() {
				if time.Now().After(deadline) {
					t.Fatal("the vCPU never parked")
				}
				time.Sleep(time.Millisecond)
			}
			select {
			case <-held:
				t.Fatal("park returned while the VM is paused")
			case <-time.After(50 * time.Millisecond):
			}
			if err := tc.release(v); err != nil {
				t.Fatal(err)
			}
			select {
			case h := <-held:
				if !h {
					t.Fatal("park did not report that it held the vCPU")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("park did not return")
			}
			if c.parked.Load() {
				t.Fatal("the vCPU is still marked parked")
			}
		})
	}
	v := &VM{stopped: make(chan struct{})}
	v.Stop()
	if err := v.Pause(); !errors.Is(err, ErrStopped) {
		t.Fatalf("Pause of a stopped VM: %v, want ErrStopped", err)
	}
	if err := v.Resume(); !errors.Is(err, ErrStopped) {
		t.Fatalf("Resume of a stopped VM: %v, want ErrStopped", err)
	}
}

// fakeGuest stands in for KVM_RUN: with immediate_exit set it returns
// EINTR at once, as KVM does; otherwise it counts an entry into the
// guest and returns after a moment (an exit for a signal), or, while
// block is open, stays in the guest until it is closed.
type fakeGuest struct {
	immediate atomic.Bool
	entries   atomic.Int64
	block     chan struct{}
}

func (g *fakeGuest) SetImmediateExit(on bool) { g.immediate.Store(on) }

func (g *fakeGuest) Run() (kvm.ExitReason, error) {
	if g.immediate.Load() {
		return kvm.ExitIntr, kvm.ErrInterrupted
	}
	g.entries.Add(1)
	if g.block != nil {
		<-g.block
		g.block = nil
	} else {
		time.Sleep(100 * time.Microsecond)
	}
	return kvm.ExitIntr, nil
}

// TestPauseTimeoutVCPURunsOn: a pause that gives up because a vCPU did
// not come out of the guest in time resumes the VM, and that vCPU, once
// out, must enter the guest again. Before, the pause's kick left its
// immediate_exit set and nothing cleared it (only a vCPU park held did):
// every KVM_RUN returned EINTR at once, and the guest's vCPU never ran
// again, a guest hung with its vCPU thread spinning in the VMM.
func TestPauseTimeoutVCPURunsOn(t *testing.T) {
	v := &VM{stopped: make(chan struct{}), stopWait: 50 * time.Millisecond}
	g := &fakeGuest{block: make(chan struct{})}
	unblock := g.block
	c := &vcpu{run: g}
	v.vcpus = []*vcpu{c}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.loop(v)
	}()
	defer func() {
		v.Stop()
		c.kick()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("the vCPU loop did not end after Stop")
		}
	}()
	waitEntries := func(n int64) bool {
		deadline := time.Now().Add(5 * time.Second)
		for g.entries.Load() < n {
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(time.Millisecond)
		}
		return true
	}
	if !waitEntries(1) {
		t.Fatal("the vCPU never entered the guest")
	}
	// The vCPU stays in the guest past the pause's bound.
	if err := v.Pause(); err == nil {
		t.Fatal("Pause held a vCPU that is still in the guest")
	}
	if v.Paused() {
		t.Fatal("a pause that gave up left the VM paused")
	}
	close(unblock)
	if !waitEntries(g.entries.Load() + 100) {
		t.Fatalf("after the failed pause the vCPU does not enter the guest again (immediate_exit %v, %d entries)",
			g.immediate.Load(), g.entries.Load())
	}
	// A pause that works still holds it, and Resume lets it run.
	if err := v.Pause(); err != nil {
		t.Fatal(err)
	}
	n := g.entries.Load()
	time.Sleep(20 * time.Millisecond)
	if m := g.entries.Load(); m != n {
		t.Fatalf("the vCPU entered the guest %d times while paused", m-n)
	}
	if err := v.Resume(); err != nil {
		t.Fatal(err)
	}
	if !waitEntries(n + 100) {
		t.Fatal("the vCPU does not run after Resume")
	}
}
