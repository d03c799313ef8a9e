package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestValidate covers configuration errors that are found before KVM is
// touched, so it runs on any host.
func TestValidate(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "kernel")
	if err := os.WriteFile(kernel, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no cpus", Config{Kernel: kernel, CPUs: 0, Memory: 256 << 20}, "--cpus"},
		{"too many cpus", Config{Kernel: kernel, CPUs: 10000, Memory: 256 << 20}, "--cpus"},
		{"tiny memory", Config{Kernel: kernel, CPUs: 1, Memory: 1 << 20}, "--memory"},
		{"odd memory", Config{Kernel: kernel, CPUs: 1, Memory: 256<<20 + 1}, "--memory"},
		{"huge memory", Config{Kernel: kernel, CPUs: 1, Memory: 1 << 50}, "--memory"},
		{"no kernel", Config{CPUs: 1, Memory: 256 << 20}, "no kernel"},
		{"missing kernel", Config{Kernel: filepath.Join(dir, "nope"), CPUs: 1, Memory: 256 << 20}, "no such file"},
		{"kernel is a dir", Config{Kernel: dir, CPUs: 1, Memory: 256 << 20}, "not a regular file"},
		{"missing initrd", Config{Kernel: kernel, Initrd: filepath.Join(dir, "nope"), CPUs: 1, Memory: 256 << 20}, "initrd"},
		{"too many devices", Config{Kernel: kernel, CPUs: 1, Memory: 256 << 20, Vsock: &Vsock{CID: 3}, Balloon: &Balloon{},
			Shares: make([]Share, MaxVirtioDevices-2)}, "19 virtio devices"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := &VM{cfg: tc.cfg}
			err := v.validate()
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("validate = %v, want ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("validate = %q, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestResultString: how a VM ended, in words: the kind, the guest's
// status, the detail.
func TestResultString(t *testing.T) {
	for _, tc := range []struct {
		r    Result
		want string
	}{
		{Result{Kind: ExitStopped}, "stopped"},
		{Result{Kind: ExitGuestStatus, Status: 3}, "guest-status 3"},
		{Result{Kind: ExitTripleFault, Detail: "vCPU 0 shut down"}, "triple-fault: vCPU 0 shut down"},
		{Result{Kind: ExitPanic, Detail: "Kernel panic - not syncing: x", Diagnosis: "vCPU 0"}, "panic: Kernel panic - not syncing: x"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.r.Kind, got, tc.want)
		}
	}
}
