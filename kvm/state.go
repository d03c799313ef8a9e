package kvm

import "fmt"

// The vCPU and VM state a snapshot saves and a restore writes back
// (Documentation/virt/kvm/api.rst). Each type is the kernel's struct,
// byte for byte (checked by the package tests against <linux/kvm.h>).

// MPState is struct kvm_mp_state: whether a vCPU runs, halts or waits
// for INIT/SIPI (KVM_MP_STATE_*).
type MPState struct {
	State uint32
}

// VCPUEvents is struct kvm_vcpu_events: pending and injected exceptions,
// interrupts, NMIs and SMIs, and the interrupt shadow.
type VCPUEvents struct {
	Exception struct {
		Injected, Nr, HasErrorCode, Pending uint8
		ErrorCode                           uint32
	}
	Interrupt struct {
		Injected, Nr, Soft, Shadow uint8
	}
	NMI struct {
		Injected, Pending, Masked, Pad uint8
	}
	SIPIVector uint32
	Flags      uint32
	SMI        struct {
		SMM, Pending, SMMInsideNMI, LatchedInit uint8
	}
	TripleFaultPending  uint8
	Reserved            [26]uint8
	ExceptionHasPayload uint8
	ExceptionPayload    uint64
}

// DebugRegs is struct kvm_debugregs.
type DebugRegs struct {
	DB       [4]uint64
	DR6, DR7 uint64
	Flags    uint64
	Reserved [9]uint64
}

// XCR is struct kvm_xcr: one extended control register.
type XCR struct {
	XCR   uint32
	_     uint32
	Value uint64
}

// XCRs is struct kvm_xcrs.
type XCRs struct {
	NrXCRs  uint32
	Flags   uint32
	XCRs    [16]XCR
	Padding [16]uint64
}

// XSaveSize is the size of struct kvm_xsave, the least KVM_GET_XSAVE2
// ever needs.
const XSaveSize = 4096

// IRQChip is struct kvm_irqchip: the state of one in-kernel interrupt
// controller (IRQChipPICMaster, IRQChipPICSlave or IRQChipIOAPIC), its
// struct kvm_pic_state or kvm_ioapic_state in Data.
type IRQChip struct {
	ChipID uint32
	_      uint32
	Data   [512]byte
}

// PITChannel is struct kvm_pit_channel_state.
type PITChannel struct {
	Count         uint32
	LatchedCount  uint16
	CountLatched  uint8
	StatusLatched uint8
	Status        uint8
	ReadState     uint8
	WriteState    uint8
	WriteLatch    uint8
	RWMode        uint8
	Mode          uint8
	BCD           uint8
	Gate          uint8
	CountLoadTime int64
}

// PITState2 is struct kvm_pit_state2: the in-kernel i8254.
type PITState2 struct {
	Channels [3]PITChannel
	Flags    uint32
	Reserved [9]uint32
}

// ClockData is struct kvm_clock_data: the VM's kvm-clock in nanoseconds,
// with the host's CLOCK_REALTIME and TSC at the same instant when Flags
// says so (ClockRealtime, ClockHostTSC).
type ClockData struct {
	Clock    uint64
	Flags    uint32
	_        uint32
	Realtime uint64
	HostTSC  uint64
	_        [4]uint32
}

// MPState reads the vCPU's multiprocessing state (KVM_GET_MP_STATE).
func (c *VCPU) MPState() (MPState, error) {
	var s MPState
	if err := ioctlPtr(c.fd, kvmGetMPState, &s); err != nil {
		return s, fmt.Errorf("kvm: vcpu %d get mp state: %w", c.id, err)
	}
	return s, nil
}

// SetMPState writes it (KVM_SET_MP_STATE).
func (c *VCPU) SetMPState(s MPState) error {
	if err := ioctlPtr(c.fd, kvmSetMPState, &s); err != nil {
		return fmt.Errorf("kvm: vcpu %d set mp state: %w", c.id, err)
	}
	return nil
}

// VCPUEvents reads the pending events (KVM_GET_VCPU_EVENTS).
func (c *VCPU) VCPUEvents() (VCPUEvents, error) {
	var e VCPUEvents
	if err := ioctlPtr(c.fd, kvmGetVCPUEvents, &e); err != nil {
		return e, fmt.Errorf("kvm: vcpu %d get vcpu events: %w", c.id, err)
	}
	return e, nil
}

// SetVCPUEvents writes them (KVM_SET_VCPU_EVENTS); Flags says which
// optional fields are valid, as KVM_GET_VCPU_EVENTS set it.
func (c *VCPU) SetVCPUEvents(e VCPUEvents) error {
	if err := ioctlPtr(c.fd, kvmSetVCPUEvents, &e); err != nil {
		return fmt.Errorf("kvm: vcpu %d set vcpu events: %w", c.id, err)
	}
	return nil
}

// DebugRegs reads the debug registers (KVM_GET_DEBUGREGS).
func (c *VCPU) DebugRegs() (DebugRegs, error) {
	var d DebugRegs
	if err := ioctlPtr(c.fd, kvmGetDebugRegs, &d); err != nil {
		return d, fmt.Errorf("kvm: vcpu %d get debug regs: %w", c.id, err)
	}
	return d, nil
}

// SetDebugRegs writes them (KVM_SET_DEBUGREGS).
func (c *VCPU) SetDebugRegs(d DebugRegs) error {
	if err := ioctlPtr(c.fd, kvmSetDebugRegs, &d); err != nil {
		return fmt.Errorf("kvm: vcpu %d set debug regs: %w", c.id, err)
	}
	return nil
}

// XCRs reads the extended control registers (KVM_GET_XCRS).
func (c *VCPU) XCRs() (XCRs, error) {
	var x XCRs
	if err := ioctlPtr(c.fd, kvmGetXCRs, &x); err != nil {
		return x, fmt.Errorf("kvm: vcpu %d get xcrs: %w", c.id, err)
	}
	return x, nil
}

// SetXCRs writes them (KVM_SET_XCRS).
func (c *VCPU) SetXCRs(x XCRs) error {
	if err := ioctlPtr(c.fd, kvmSetXCRs, &x); err != nil {
		return fmt.Errorf("kvm: vcpu %d set xcrs: %w", c.id, err)
	}
	return nil
}

// XSave reads the XSAVE area into a buffer of size bytes: KVM_GET_XSAVE2
// when size is KVM_CAP_XSAVE2's answer (it may exceed XSaveSize, with
// AMX state), KVM_GET_XSAVE when size is XSaveSize and xsave2 is false.
func (c *VCPU) XSave(size int, xsave2 bool) ([]byte, error) {
	if size < XSaveSize || (!xsave2 && size != XSaveSize) {
		return nil, fmt.Errorf("kvm: vcpu %d get xsave: bad size %d", c.id, size)
	}
	req := kvmGetXSave
	if xsave2 {
		req = kvmGetXSave2
	}
	b := make([]byte, size)
	if err := ioctlBytes(c.fd, req, b); err != nil {
		return nil, fmt.Errorf("kvm: vcpu %d get xsave: %w", c.id, err)
	}
	return b, nil
}

// SetXSave writes an XSAVE area KVM_GET_XSAVE or KVM_GET_XSAVE2 returned
// (KVM_SET_XSAVE reads as many bytes as KVM_CAP_XSAVE2 says, at least
// XSaveSize: the caller checks len(b) against it).
func (c *VCPU) SetXSave(b []byte) error {
	if len(b) < XSaveSize {
		return fmt.Errorf("kvm: vcpu %d set xsave: %d bytes, want at least %d", c.id, len(b), XSaveSize)
	}
	if err := ioctlBytes(c.fd, kvmSetXSave, b); err != nil {
		return fmt.Errorf("kvm: vcpu %d set xsave: %w", c.id, err)
	}
	return nil
}

// SetTSCKHz sets the guest's TSC frequency (KVM_SET_TSC_KHZ).
func (c *VCPU) SetTSCKHz(khz uint32) error {
	if _, err := ioctl(c.fd, kvmSetTSCKHz, uintptr(khz)); err != nil {
		return fmt.Errorf("kvm: vcpu %d set tsc khz %d: %w", c.id, khz, err)
	}
	return nil
}

// KVMClockCtrl tells the guest, through its kvm-clock page, that the
// host paused it, so its soft-lockup watchdog does not fire
// (KVM_KVMCLOCK_CTRL). It fails with EINVAL when the guest has not set
// up kvm-clock on this vCPU.
func (c *VCPU) KVMClockCtrl() error {
	if _, err := ioctl(c.fd, kvmKVMClockCtrl, 0); err != nil {
		return fmt.Errorf("kvm: vcpu %d kvmclock ctrl: %w", c.id, err)
	}
	return nil
}

// ReadMSRs reads every MSR of indices KVM lets it read (KVM_GET_MSRS in
// batches): KVM stops a batch at the first MSR it refuses, which is then
// left out. skipped lists those.
func (c *VCPU) ReadMSRs(indices []uint32) (got []MSR, skipped []uint32, err error) {
	for len(indices) > 0 {
		batch := make([]MSR, min(len(indices), maxMSRs))
		for i := range batch {
			batch[i].Index = indices[i]
		}
		n, err := msrs(c.fd, kvmGetMSRs, batch)
		if err != nil {
			return nil, nil, fmt.Errorf("kvm: vcpu %d get msrs: %w", c.id, err)
		}
		got = append(got, batch[:n]...)
		if n < len(batch) {
			skipped = append(skipped, indices[n])
			n++
		}
		indices = indices[n:]
	}
	return got, skipped, nil
}

// WriteMSRs writes any number of MSRs (KVM_SET_MSRS in batches). It
// fails naming the first MSR KVM refused.
func (c *VCPU) WriteMSRs(m []MSR) error {
	for len(m) > 0 {
		batch := append([]MSR(nil), m[:min(len(m), maxMSRs)]...)
		n, err := msrs(c.fd, kvmSetMSRs, batch)
		if err != nil {
			return fmt.Errorf("kvm: vcpu %d set msrs: %w", c.id, err)
		}
		if n < len(batch) {
			return fmt.Errorf("kvm: vcpu %d set msrs: msr %#x rejected", c.id, batch[n].Index)
		}
		m = m[n:]
	}
	return nil
}

// IRQChip reads one in-kernel interrupt controller (KVM_GET_IRQCHIP).
func (v *VM) IRQChip(id uint32) (IRQChip, error) {
	c := IRQChip{ChipID: id}
	if err := ioctlPtr(v.fd, kvmGetIRQChip, &c); err != nil {
		return c, fmt.Errorf("kvm: get irqchip %d: %w", id, err)
	}
	return c, nil
}

// SetIRQChip writes one (KVM_SET_IRQCHIP).
func (v *VM) SetIRQChip(c IRQChip) error {
	if err := ioctlPtr(v.fd, kvmSetIRQChip, &c); err != nil {
		return fmt.Errorf("kvm: set irqchip %d: %w", c.ChipID, err)
	}
	return nil
}

// PIT2 reads the in-kernel PIT (KVM_GET_PIT2).
func (v *VM) PIT2() (PITState2, error) {
	var p PITState2
	if err := ioctlPtr(v.fd, kvmGetPIT2, &p); err != nil {
		return p, fmt.Errorf("kvm: get pit2: %w", err)
	}
	return p, nil
}

// SetPIT2 writes it (KVM_SET_PIT2).
func (v *VM) SetPIT2(p PITState2) error {
	if err := ioctlPtr(v.fd, kvmSetPIT2, &p); err != nil {
		return fmt.Errorf("kvm: set pit2: %w", err)
	}
	return nil
}

// Clock reads the VM's kvm-clock (KVM_GET_CLOCK).
func (v *VM) Clock() (ClockData, error) {
	var c ClockData
	if err := ioctlPtr(v.fd, kvmGetClock, &c); err != nil {
		return c, fmt.Errorf("kvm: get clock: %w", err)
	}
	return c, nil
}

// SetClock sets it (KVM_SET_CLOCK). With ClockRealtime in c.Flags, KVM
// adds the host CLOCK_REALTIME time elapsed since c.Realtime (never a
// negative amount), so the guest's clock moves on by the time the VM
// spent saved.
func (v *VM) SetClock(c ClockData) error {
	if err := ioctlPtr(v.fd, kvmSetClock, &c); err != nil {
		return fmt.Errorf("kvm: set clock: %w", err)
	}
	return nil
}

// CheckExtension returns KVM_CHECK_EXTENSION's answer for cap on the VM
// (some answers, such as KVM_CAP_XSAVE2's size, depend on the VM).
func (v *VM) CheckExtension(c Cap) (int, error) {
	r, err := ioctl(v.fd, kvmCheckExtension, uintptr(c))
	if err != nil {
		return 0, fmt.Errorf("kvm: check extension %d: %w", c, err)
	}
	return int(r), nil
}
