package kvm

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// VM is a KVM virtual machine file descriptor.
type VM struct {
	fd       int
	mmapSize int
}

// Close closes the VM descriptor. vCPUs must be closed first. A second
// Close does nothing: the descriptor number may already belong to another
// file.
func (v *VM) Close() error {
	if v.fd < 0 {
		return nil
	}
	fd := v.fd
	v.fd = -1
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("kvm: close vm: %w", err)
	}
	return nil
}

// SetTSSAddr places the three-page TSS region Intel VT-x needs in real mode
// (KVM_SET_TSS_ADDR); it must not overlap guest RAM or devices.
func (v *VM) SetTSSAddr(addr uint64) error {
	if _, err := ioctl(v.fd, kvmSetTSSAddr, uintptr(addr)); err != nil {
		return fmt.Errorf("kvm: set tss addr %#x: %w", addr, err)
	}
	return nil
}

// SetIdentityMapAddr places the one-page identity map VT-x uses in real
// mode (KVM_SET_IDENTITY_MAP_ADDR).
func (v *VM) SetIdentityMapAddr(addr uint64) error {
	a := addr
	if err := ioctlPtr(v.fd, kvmSetIdentityMapAddr, &a); err != nil {
		return fmt.Errorf("kvm: set identity map addr %#x: %w", addr, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PIC, IOAPIC and local APICs
// (KVM_CREATE_IRQCHIP). Must precede CreateVCPU.
func (v *VM) CreateIRQChip() error {
	if _, err := ioctl(v.fd, kvmCreateIRQChip, 0); err != nil {
		return fmt.Errorf("kvm: create irqchip: %w", err)
	}
	return nil
}

// CreatePIT2 creates the in-kernel i8254 PIT, with port 0x61 emulated too
// (KVM_CREATE_PIT2 with KVM_PIT_SPEAKER_DUMMY).
func (v *VM) CreatePIT2() error {
	cfg := pitConfig{Flags: pitSpeakerDummy}
	if err := ioctlPtr(v.fd, kvmCreatePIT2, &cfg); err != nil {
		return fmt.Errorf("kvm: create pit2: %w", err)
	}
	return nil
}

// SetUserMemoryRegion maps host memory mem at guest-physical address gpa in
// slot (KVM_SET_USER_MEMORY_REGION). mem must be a page-aligned mmap that
// stays mapped while the VM lives.
func (v *VM) SetUserMemoryRegion(slot uint32, gpa uint64, mem []byte) error {
	if len(mem) == 0 {
		return fmt.Errorf("kvm: set user memory region %d: empty", slot)
	}
	r := userspaceMemoryRegion{
		Slot:          slot,
		GuestPhysAddr: gpa,
		MemorySize:    uint64(len(mem)),
		UserspaceAddr: hostAddr(mem),
	}
	if err := ioctlPtr(v.fd, kvmSetUserMemoryRegion, &r); err != nil {
		return fmt.Errorf("kvm: set user memory region %d (%#x+%#x): %w", slot, gpa, len(mem), err)
	}
	return nil
}

// IRQLine sets the level of an interrupt line of the in-kernel irqchip
// (KVM_IRQ_LINE).
func (v *VM) IRQLine(gsi uint32, level bool) error {
	l := irqLevel{IRQ: gsi}
	if level {
		l.Level = 1
	}
	if err := ioctlPtr(v.fd, kvmIRQLine, &l); err != nil {
		return fmt.Errorf("kvm: irq line %d: %w", gsi, err)
	}
	return nil
}

// RegisterIRQFD makes a write to eventfd efd inject an edge on gsi
// (KVM_IRQFD), so devices raise interrupts without an ioctl.
func (v *VM) RegisterIRQFD(efd int, gsi uint32) error {
	r := irqfd{FD: uint32(efd), GSI: gsi}
	if err := ioctlPtr(v.fd, kvmIRQFD, &r); err != nil {
		return fmt.Errorf("kvm: irqfd gsi %d: %w", gsi, err)
	}
	return nil
}

// UnregisterIRQFD removes an irqfd registration.
func (v *VM) UnregisterIRQFD(efd int, gsi uint32) error {
	r := irqfd{FD: uint32(efd), GSI: gsi, Flags: irqfdFlagDeassign}
	if err := ioctlPtr(v.fd, kvmIRQFD, &r); err != nil {
		return fmt.Errorf("kvm: irqfd deassign gsi %d: %w", gsi, err)
	}
	return nil
}

// IOEventFD describes a KVM_IOEVENTFD registration: a guest write of Len
// bytes at Addr (port I/O when PIO is set, else MMIO), optionally only of
// the value Datamatch, signals eventfd FD instead of exiting to userspace.
type IOEventFD struct {
	Addr      uint64
	Len       uint32 // 0 (any length), 1, 2, 4 or 8
	FD        int
	PIO       bool
	Datamatch *uint64
}

func (e IOEventFD) raw(deassign bool) ioeventfd {
	r := ioeventfd{Addr: e.Addr, Len: e.Len, FD: int32(e.FD)}
	if e.PIO {
		r.Flags |= ioeventfdFlagPIO
	}
	if e.Datamatch != nil {
		r.Flags |= ioeventfdFlagDatamatch
		r.Datamatch = *e.Datamatch
	}
	if deassign {
		r.Flags |= ioeventfdFlagDeassign
	}
	return r
}

// RegisterIOEventFD adds an ioeventfd (KVM_IOEVENTFD).
func (v *VM) RegisterIOEventFD(e IOEventFD) error {
	r := e.raw(false)
	if err := ioctlPtr(v.fd, kvmIOEventFD, &r); err != nil {
		return fmt.Errorf("kvm: ioeventfd %#x: %w", e.Addr, err)
	}
	return nil
}

// UnregisterIOEventFD removes an ioeventfd registered with the same values.
func (v *VM) UnregisterIOEventFD(e IOEventFD) error {
	r := e.raw(true)
	if err := ioctlPtr(v.fd, kvmIOEventFD, &r); err != nil {
		return fmt.Errorf("kvm: ioeventfd deassign %#x: %w", e.Addr, err)
	}
	return nil
}

// CreateVCPU creates vCPU id (its initial APIC ID) and maps its kvm_run page.
func (v *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := ioctl(v.fd, kvmCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("kvm: create vcpu %d: %w", id, err)
	}
	unix.CloseOnExec(int(fd))
	run, err := unix.Mmap(int(fd), 0, v.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("kvm: mmap vcpu %d run struct: %w", id, err)
	}
	return &VCPU{fd: int(fd), id: id, run: run}, nil
}
