package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrInterrupted is returned by Run when KVM_RUN returned because of a
// signal or immediate_exit rather than a guest exit.
var ErrInterrupted = errors.New("kvm: run interrupted")

// VCPU is a KVM vCPU and its mmapped struct kvm_run. Run and the register
// accessors must be called from the one OS thread that runs the vCPU;
// RequestExit may be called from any goroutine.
type VCPU struct {
	fd  int
	id  int
	run []byte
}

// ID returns the vCPU index it was created with.
func (c *VCPU) ID() int { return c.id }

// Close unmaps the run struct and closes the vCPU. A second Close does
// nothing: the descriptor number may already belong to another file. It
// must not run concurrently with the vCPU's other methods.
func (c *VCPU) Close() error {
	if c.run != nil {
		unix.Munmap(c.run)
		c.run = nil
	}
	if c.fd < 0 {
		return nil
	}
	fd := c.fd
	c.fd = -1
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("kvm: close vcpu %d: %w", c.id, err)
	}
	return nil
}

// Run enters the guest (KVM_RUN) until the next exit to userspace and
// returns its reason. It returns ErrInterrupted when a signal or
// RequestExit interrupted it; the caller decides whether to re-enter.
func (c *VCPU) Run() (ExitReason, error) {
	_, err := ioctl(c.fd, kvmRun, 0)
	if err != nil {
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			return ExitIntr, ErrInterrupted
		}
		return 0, fmt.Errorf("kvm: run vcpu %d: %w", c.id, err)
	}
	return ExitReason(binary.LittleEndian.Uint32(c.run[runExitReason:])), nil
}

// SetImmediateExit sets or clears kvm_run.immediate_exit: while set, KVM_RUN
// returns EINTR at once instead of entering the guest.
func (c *VCPU) SetImmediateExit(on bool) {
	var v byte
	if on {
		v = 1
	}
	setImmediateExit(c.run, v)
}

// IO describes a KVM_EXIT_IO exit. Data aliases the run page: for an OUT it
// holds the bytes written; for an IN the handler fills it.
type IO struct {
	Port  uint16
	Out   bool
	Size  int // 1, 2 or 4
	Count int // repetitions (string I/O)
	Data  []byte
}

// IO returns the details of the current I/O exit. The data offset comes
// from the kernel; it is still bounds-checked against the run page.
func (c *VCPU) IO() (IO, error) {
	r := c.run
	io := IO{
		Out:   r[runIODirection] == ioOut,
		Size:  int(r[runIOSize]),
		Port:  binary.LittleEndian.Uint16(r[runIOPort:]),
		Count: int(binary.LittleEndian.Uint32(r[runIOCount:])),
	}
	off := binary.LittleEndian.Uint64(r[runIODataOffset:])
	n := uint64(io.Size) * uint64(io.Count)
	if io.Size == 0 || off > uint64(len(r)) || n > uint64(len(r))-off {
		return IO{}, fmt.Errorf("kvm: vcpu %d: io exit data %#x+%d outside run page", c.id, off, n)
	}
	io.Data = r[off : off+n]
	return io, nil
}

// MMIO describes a KVM_EXIT_MMIO exit. Data aliases the run page.
type MMIO struct {
	Addr  uint64
	Write bool
	Data  []byte
}

// MMIO returns the details of the current MMIO exit.
func (c *VCPU) MMIO() MMIO {
	r := c.run
	n := binary.LittleEndian.Uint32(r[runMMIOLen:])
	if n > 8 {
		n = 8
	}
	return MMIO{
		Addr:  binary.LittleEndian.Uint64(r[runMMIOPhysAddr:]),
		Write: r[runMMIOIsWrite] != 0,
		Data:  r[runMMIOData : runMMIOData+int(n)],
	}
}

// SystemEvent returns the type of a KVM_EXIT_SYSTEM_EVENT exit.
func (c *VCPU) SystemEvent() uint32 {
	return binary.LittleEndian.Uint32(c.run[runSystemEventType:])
}

// InternalError returns the suberror of a KVM_EXIT_INTERNAL_ERROR exit.
func (c *VCPU) InternalError() uint32 {
	return binary.LittleEndian.Uint32(c.run[runInternalSuberror:])
}

// FailEntryReason returns the hardware reason of a KVM_EXIT_FAIL_ENTRY exit.
func (c *VCPU) FailEntryReason() uint64 {
	return binary.LittleEndian.Uint64(c.run[runFailEntryReason:])
}

// Regs reads the general-purpose registers (KVM_GET_REGS).
func (c *VCPU) Regs() (Regs, error) {
	var r Regs
	if err := ioctlPtr(c.fd, kvmGetRegs, &r); err != nil {
		return r, fmt.Errorf("kvm: vcpu %d get regs: %w", c.id, err)
	}
	return r, nil
}

// SetRegs writes the general-purpose registers (KVM_SET_REGS).
func (c *VCPU) SetRegs(r Regs) error {
	if err := ioctlPtr(c.fd, kvmSetRegs, &r); err != nil {
		return fmt.Errorf("kvm: vcpu %d set regs: %w", c.id, err)
	}
	return nil
}

// Sregs reads the special registers (KVM_GET_SREGS).
func (c *VCPU) Sregs() (Sregs, error) {
	var s Sregs
	if err := ioctlPtr(c.fd, kvmGetSregs, &s); err != nil {
		return s, fmt.Errorf("kvm: vcpu %d get sregs: %w", c.id, err)
	}
	return s, nil
}

// SetSregs writes the special registers (KVM_SET_SREGS).
func (c *VCPU) SetSregs(s Sregs) error {
	if err := ioctlPtr(c.fd, kvmSetSregs, &s); err != nil {
		return fmt.Errorf("kvm: vcpu %d set sregs: %w", c.id, err)
	}
	return nil
}

// SetFPU writes the FPU state (KVM_SET_FPU).
func (c *VCPU) SetFPU(f FPU) error {
	if err := ioctlPtr(c.fd, kvmSetFPU, &f); err != nil {
		return fmt.Errorf("kvm: vcpu %d set fpu: %w", c.id, err)
	}
	return nil
}

// SetCPUID sets the CPUID the guest sees on this vCPU (KVM_SET_CPUID2).
func (c *VCPU) SetCPUID(entries []CPUIDEntry) error {
	if err := setCPUID2(c.fd, entries); err != nil {
		return fmt.Errorf("kvm: vcpu %d set cpuid (%d entries): %w", c.id, len(entries), err)
	}
	return nil
}

// SetMSRs writes MSRs (KVM_SET_MSRS). It fails if KVM rejected any of them.
func (c *VCPU) SetMSRs(m []MSR) error {
	n, err := msrs(c.fd, kvmSetMSRs, m)
	if err != nil {
		return fmt.Errorf("kvm: vcpu %d set msrs: %w", c.id, err)
	}
	if n != len(m) {
		return fmt.Errorf("kvm: vcpu %d set msrs: msr %#x rejected", c.id, m[n].Index)
	}
	return nil
}

// MSRs reads the MSRs whose Index fields are set (KVM_GET_MSRS).
func (c *VCPU) MSRs(m []MSR) error {
	n, err := msrs(c.fd, kvmGetMSRs, m)
	if err != nil {
		return fmt.Errorf("kvm: vcpu %d get msrs: %w", c.id, err)
	}
	if n != len(m) {
		return fmt.Errorf("kvm: vcpu %d get msrs: msr %#x unreadable", c.id, m[n].Index)
	}
	return nil
}

// LAPIC reads the local APIC state (KVM_GET_LAPIC).
func (c *VCPU) LAPIC() (*LAPICState, error) {
	var l LAPICState
	if err := ioctlPtr(c.fd, kvmGetLAPIC, &l); err != nil {
		return nil, fmt.Errorf("kvm: vcpu %d get lapic: %w", c.id, err)
	}
	return &l, nil
}

// SetLAPIC writes the local APIC state (KVM_SET_LAPIC).
func (c *VCPU) SetLAPIC(l *LAPICState) error {
	if err := ioctlPtr(c.fd, kvmSetLAPIC, l); err != nil {
		return fmt.Errorf("kvm: vcpu %d set lapic: %w", c.id, err)
	}
	return nil
}

// TSCKHz returns the guest TSC frequency in kHz (KVM_GET_TSC_KHZ).
func (c *VCPU) TSCKHz() (uint32, error) {
	r, err := ioctl(c.fd, kvmGetTSCKHz, 0)
	if err != nil {
		return 0, fmt.Errorf("kvm: vcpu %d get tsc khz: %w", c.id, err)
	}
	return uint32(r), nil
}
