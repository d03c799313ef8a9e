package vmm

import (
	"errors"
	"testing"
	"time"
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
