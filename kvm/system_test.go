package kvm

import (
	"errors"
	"io/fs"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSmoke drives the ioctls vessel uses against the host's /dev/kvm
// (any KVM, PVM included: this boots nothing). It is skipped, saying so,
// on hosts without /dev/kvm; the end-to-end tests are what prove boots.
func TestSmoke(t *testing.T) {
	sys, err := Open(DefaultDevice)
	if errors.Is(err, fs.ErrNotExist) {
		t.Skip("no /dev/kvm on this host")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	if n := sys.MaxVCPUs(); n < 1 {
		t.Fatalf("MaxVCPUs = %d", n)
	}
	cpuid, err := sys.SupportedCPUID()
	if err != nil || len(cpuid) == 0 {
		t.Fatalf("SupportedCPUID: %d entries, %v", len(cpuid), err)
	}
	vm, err := sys.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	for _, step := range []func() error{
		func() error { return vm.SetTSSAddr(0xFFFBD000) },
		func() error { return vm.SetIdentityMapAddr(0xFFFBC000) },
		vm.CreateIRQChip,
		vm.CreatePIT2,
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	mem, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := vm.SetUserMemoryRegion(0, 0, mem); err != nil {
		t.Fatal(err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := vm.RegisterIRQFD(efd, 4); err != nil {
		t.Fatal(err)
	}
	if err := vm.UnregisterIRQFD(efd, 4); err != nil {
		t.Fatal(err)
	}
	ioe := IOEventFD{Addr: 0xF00, Len: 4, FD: efd, PIO: true}
	if err := vm.RegisterIOEventFD(ioe); err != nil {
		t.Fatal(err)
	}
	if err := vm.UnregisterIOEventFD(ioe); err != nil {
		t.Fatal(err)
	}
	if err := vm.IRQLine(4, true); err != nil {
		t.Fatal(err)
	}
	c, err := vm.CreateVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetCPUID(cpuid); err != nil {
		t.Fatal(err)
	}
	st, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st["exits"]; !ok {
		t.Errorf("vCPU stats lack the exits counter: %v", st)
	}
	vst, err := vm.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := vst["pages_4k"]; !ok {
		t.Errorf("VM stats lack the pages_4k gauge: %v", vst)
	}
	regs, err := c.Regs()
	if err != nil {
		t.Fatal(err)
	}
	regs.RIP, regs.RFLAGS = 0x1000, 2
	if err := c.SetRegs(regs); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Regs(); got.RIP != 0x1000 {
		t.Fatalf("RIP after SetRegs = %#x", got.RIP)
	}
	s, err := c.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	l, err := c.LAPIC()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetLAPIC(l); err != nil {
		t.Fatal(err)
	}
	if err := c.SetFPU(FPU{FCW: 0x37F, MXCSR: 0x1F80}); err != nil {
		t.Fatal(err)
	}
	msrs := []MSR{{Index: 0x174}}
	if err := c.MSRs(msrs); err != nil {
		t.Fatal(err)
	}
	if err := c.SetMSRs(msrs); err != nil {
		t.Fatal(err)
	}
	// With immediate_exit set, KVM_RUN returns EINTR without entering the
	// guest: the mechanism vessel uses to stop vCPUs.
	c.SetImmediateExit(true)
	if _, err := c.Run(); !errors.Is(err, ErrInterrupted) {
		t.Fatalf("Run with immediate_exit = %v, want ErrInterrupted", err)
	}
}
