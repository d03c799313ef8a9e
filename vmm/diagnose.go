package vmm

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/vesselvm/vessel/guestmem"
	"github.com/vesselvm/vessel/kvm"
)

// MSRs a diagnosis reads: the TSC and its deadline (Intel SDM vol. 3,
// 10.5.4.1; AMD implements the same MSR under KVM).
const msrTSCDeadline = 0x6e0

// Diagnose describes what the guest is doing, for a guest that stopped
// answering: for each vCPU whether it runs or halts, where, whether it
// takes interrupts, what its local APIC holds (requested and in-service
// vectors, the timer), the I/O APIC's unmasked pins, and each virtio
// device's registers and rings (see virtio.TransportView). A guest
// waiting in HLT with an interrupt requested but never delivered, or a
// used ring ahead of what the driver took with no interrupt pending,
// points at the interrupt path; a vCPU spinning at one RIP, at the
// guest. The VM is paused while it is read and resumed after (unless it
// was paused already). The report is several lines, each ending in a
// newline.
func (v *VM) Diagnose() (string, error) {
	wasPaused := v.Paused()
	if err := v.Pause(); err != nil {
		return "", err
	}
	if !wasPaused {
		defer v.Resume()
	}
	var b strings.Builder
	var khz uint32
	if len(v.vcpus) > 0 {
		khz, _ = v.vcpus[0].kc.TSCKHz()
	}
	for id, c := range v.vcpus {
		fmt.Fprintf(&b, "vCPU %d: %s\n", id, describeVCPU(c.kc, v.mem, khz))
	}
	if chip, err := v.vm.IRQChip(kvm.IRQChipIOAPIC); err == nil {
		fmt.Fprintf(&b, "IOAPIC: %s\n", describeIOAPIC(chip.Data[:]))
	} else {
		fmt.Fprintf(&b, "IOAPIC: %v\n", err)
	}
	if chip, err := v.vm.IRQChip(kvm.IRQChipPICMaster); err == nil {
		d := chip.Data
		fmt.Fprintf(&b, "PIC: irr %#x imr %#x isr %#x\n", d[1], d[2], d[3])
	}
	for _, d := range v.virtio {
		fmt.Fprintf(&b, "virtio@%#x gsi %d: %s\n", d.base, d.gsi, d.t.Inspect())
	}
	return b.String(), nil
}

// describeVCPU formats one paused vCPU's state on one line; what cannot
// be read is named in its place.
func describeVCPU(kc *kvm.VCPU, mem *guestmem.Memory, tscKHz uint32) string {
	var parts []string
	if mp, err := kc.MPState(); err == nil {
		parts = append(parts, mpStateName(mp.State))
	} else {
		parts = append(parts, err.Error())
	}
	r, err := kc.Regs()
	if err == nil {
		parts = append(parts, fmt.Sprintf("rip %#x IF=%d", r.RIP, r.RFLAGS>>9&1))
	} else {
		parts = append(parts, err.Error())
	}
	if s, serr := kc.Sregs(); err == nil && serr == nil && mem != nil {
		parts = append(parts, describeStack(mem, s, r.RSP)...)
	}
	if l, err := kc.LAPIC(); err == nil {
		parts = append(parts, describeLAPIC(l.Regs[:]))
	} else {
		parts = append(parts, err.Error())
	}
	if msrs, _, err := kc.ReadMSRs([]uint32{msrIA32TSC, msrTSCDeadline}); err == nil && len(msrs) == 2 {
		tsc, deadline := msrs[0].Data, msrs[1].Data
		switch {
		case deadline == 0:
			parts = append(parts, "tsc-deadline unarmed")
		case tscKHz == 0:
			parts = append(parts, fmt.Sprintf("tsc-deadline %d cycles ahead", int64(deadline-tsc)))
		default:
			parts = append(parts, fmt.Sprintf("tsc-deadline in %.3f ms", float64(int64(deadline-tsc))/float64(tscKHz)))
		}
	}
	if e, err := kc.VCPUEvents(); err == nil {
		if e.Interrupt.Injected != 0 {
			parts = append(parts, fmt.Sprintf("injecting vector %#x", e.Interrupt.Nr))
		}
		if e.Interrupt.Shadow != 0 {
			parts = append(parts, "interrupt shadow")
		}
		if e.Exception.Injected != 0 || e.Exception.Pending != 0 {
			parts = append(parts, fmt.Sprintf("exception %d pending", e.Exception.Nr))
		}
		if e.NMI.Pending != 0 || e.NMI.Injected != 0 {
			parts = append(parts, "NMI pending")
		}
	}
	return strings.Join(parts, ", ")
}

// Stack reading in a diagnosis: how far above the stack pointer it
// looks, and how many kernel addresses it lists at most.
const (
	stackScanBytes = 1024
	stackMaxAddrs  = 12
)

// kernelTextStart and kernelTextEnd bound the x86-64 Linux kernel's
// text and modules mappings (Documentation/arch/x86/x86_64/mm.rst:
// ffffffff80000000 to the fixmap below ffffffffff000000), where return
// addresses on a kernel stack lie; small negative numbers on the stack
// (-errno in pt_regs) are not among them.
const (
	kernelTextStart = 0xffff_ffff_8000_0000
	kernelTextEnd   = 0xffff_ffff_ff00_0000
)

// describeStack reads a long-mode vCPU's page-table root and stack: its
// CR3, flagged when it lies outside guest RAM (then the vCPU holds state
// that is not its guest kernel's: an outer hypervisor's leaked into it,
// as on the nested test platform, or that of a nested guest the guest
// runs itself), and the kernel-text addresses among the stack's first
// words (return addresses, most recent first), which the guest kernel's
// symbols turn into a backtrace. The stack is read through the guest's
// own page tables (translate), one translation per page, from RSP
// rounded down to a word and never past the top of the address space
// or into a non-canonical address; a hostile guest can make it list only
// numbers its memory holds.
func describeStack(mem *guestmem.Memory, s kvm.Sregs, rsp uint64) []string {
	if s.EFER&eferLMA == 0 || s.CR0&cr0PG == 0 {
		return nil
	}
	cr3 := s.CR3 & pteAddr
	if _, err := mem.Slice(cr3, 4096); err != nil {
		return []string{fmt.Sprintf("cr3 %#x outside guest RAM", s.CR3)}
	}
	var addrs []string
	va := rsp &^ 7
	end := va + stackScanBytes
	if end < va {
		end = 0 // the top of the address space: stop there
	}
	var page, gpaPage uint64
	mapped := false
	for ; va != end && len(addrs) < stackMaxAddrs; va += 8 {
		if !canonical(va, s.CR4) {
			break
		}
		if p := va &^ 0xfff; !mapped || p != page {
			page = p
			gpaPage, mapped = translate(mem, s.CR3, s.CR4, p)
			if !mapped {
				break
			}
		}
		w, err := mem.Uint64(gpaPage + va&0xfff)
		if err != nil {
			break
		}
		if w >= kernelTextStart && w < kernelTextEnd {
			addrs = append(addrs, fmt.Sprintf("%#x", w))
		}
	}
	return []string{fmt.Sprintf("cr3 %#x", s.CR3), "stack [" + strings.Join(addrs, " ") + "]"}
}

// canonical reports whether va is a canonical address for the paging
// mode: bits 63 down to 47 (48 with LA57, 56) all equal.
func canonical(va, cr4 uint64) bool {
	bits := uint(48)
	if cr4&cr4LA57 != 0 {
		bits = 57
	}
	top := int64(va) >> (bits - 1)
	return top == 0 || top == -1
}

// mpStateName names KVM_MP_STATE_* (api.rst, KVM_GET_MP_STATE).
func mpStateName(s uint32) string {
	switch s {
	case 0:
		return "runnable"
	case 1:
		return "uninitialized"
	case 2:
		return "init received"
	case 3:
		return "halted"
	case 4:
		return "sipi received"
	}
	return fmt.Sprintf("mp state %d", s)
}

// Local APIC register offsets (Intel SDM vol. 3, table 10-1).
const (
	lapicTPR   = 0x80
	lapicISR   = 0x100
	lapicIRR   = 0x200
	lapicLVTT  = 0x320
	lapicTMICT = 0x380
	lapicTMCCT = 0x390
)

// describeLAPIC formats a local APIC's pending (IRR) and in-service
// (ISR) vectors, its task priority and its timer.
func describeLAPIC(regs []byte) string {
	reg := func(off int) uint32 { return binary.LittleEndian.Uint32(regs[off:]) }
	vectors := func(base int) string {
		var vs []string
		for i := 0; i < 8; i++ {
			w := reg(base + 0x10*i)
			for bit := 0; bit < 32; bit++ {
				if w&(1<<bit) != 0 {
					vs = append(vs, fmt.Sprintf("%#x", i*32+bit))
				}
			}
		}
		return "[" + strings.Join(vs, " ") + "]"
	}
	lvtt := reg(lapicLVTT)
	mode := [4]string{"one-shot", "periodic", "tsc-deadline", "reserved"}[lvtt>>17&3]
	timer := fmt.Sprintf("timer %s vector %#x", mode, lvtt&0xff)
	if lvtt&(1<<16) != 0 {
		timer += " masked"
	}
	if mode != "tsc-deadline" {
		timer += fmt.Sprintf(" initial %d current %d", reg(lapicTMICT), reg(lapicTMCCT))
	}
	return fmt.Sprintf("lapic irr %s isr %s tpr %#x %s", vectors(lapicIRR), vectors(lapicISR), reg(lapicTPR)&0xff, timer)
}

// describeIOAPIC formats struct kvm_ioapic_state (base_address u64,
// ioregsel u32, id u32, irr u32, pad u32, redirtbl[24] u64): its
// request register and each unmasked pin's vector, trigger mode and
// remote IRR (82093AA datasheet, 3.2.4).
func describeIOAPIC(d []byte) string {
	irr := binary.LittleEndian.Uint32(d[16:])
	s := fmt.Sprintf("irr %#x", irr)
	for pin := 0; pin < 24; pin++ {
		e := binary.LittleEndian.Uint64(d[24+8*pin:])
		if e&(1<<16) != 0 {
			continue // masked
		}
		trig := "edge"
		if e&(1<<15) != 0 {
			trig = "level"
		}
		s += fmt.Sprintf(" | pin %d vector %#x %s", pin, e&0xff, trig)
		if e&(1<<14) != 0 {
			s += " remote-irr"
		}
		if e&(1<<12) != 0 {
			s += " delivery-pending"
		}
	}
	return s
}
