package vmm

import "github.com/vesselvm/vessel/kvm"

// CPUID leaves and bits vessel shapes (Intel SDM vol. 2A "CPUID", AMD APM
// vol. 3 appendix E, Documentation/virt/kvm/x86/cpuid.rst).
const (
	leafFeatures       = 0x1
	leafCacheParams    = 0x4
	leafThermal        = 0x6
	leafExtTopology    = 0xB
	leafExtTopologyV2  = 0x1F
	leafKVMSignature   = 0x40000000
	leafKVMFeatures    = 0x40000001
	leafAMDExtFeatures = 0x80000001
	leafAMDSizes       = 0x80000008
	leafAMDTopology    = 0x8000001E

	ecxHypervisor = 1 << 31 // CPUID.1:ECX[31], "running under a hypervisor"
	edxHTT        = 1 << 28 // CPUID.1:EDX[28], multi-threading / logical count valid

	amdCmpLegacy = 1 << 1 // CPUID.80000001:ECX[1]
)

// ecxTSCDeadline is CPUID.1:ECX[24], the LAPIC timer's TSC-deadline mode.
const ecxTSCDeadline = 1 << 24

// withTSCDeadline returns a copy of the table with the TSC-deadline timer
// advertised: the guest then programs its timer with one MSR write, which
// KVM handles in the kernel, instead of the LAPIC's initial-count register.
func withTSCDeadline(t []kvm.CPUIDEntry) []kvm.CPUIDEntry {
	out := append([]kvm.CPUIDEntry(nil), t...)
	for i := range out {
		if out[i].Function == leafFeatures {
			out[i].ECX |= ecxTSCDeadline
		}
	}
	return out
}

// shapeCPUID returns the CPUID table for vCPU id of a VM with n vCPUs,
// starting from KVM's supported table. Each vCPU is its own single-threaded
// core in one socket: APIC ID = id (leaf 1 EBX[31:24], x2APIC ID in leaf
// 0xB/0x1F EDX), and the topology leaves describe n cores. The KVM
// paravirtual leaves (0x40000000/1) are passed through as KVM reports them,
// so the guest finds kvm-clock and never calibrates the TSC against the PIT.
func shapeCPUID(supported []kvm.CPUIDEntry, id, n int) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, 0, len(supported))
	for _, e := range supported {
		switch e.Function {
		case leafFeatures:
			// EBX[31:24] initial APIC ID, [23:16] logical processors per
			// package, [15:8] CLFLUSH line size (in 8-byte units).
			e.EBX = uint32(id)<<24 | uint32(n&0xff)<<16 | 8<<8 | e.EBX&0xff
			e.ECX |= ecxHypervisor
			if n > 1 {
				e.EDX |= edxHTT
			} else {
				e.EDX &^= edxHTT
			}
		case leafCacheParams:
			// EAX[31:26]: cores per package - 1; [25:14]: threads sharing this cache - 1.
			if e.EAX&0x1f != 0 { // a valid cache level
				e.EAX &= 0x3fff
				e.EAX |= uint32(n-1) << 26
				level := (e.EAX >> 5) & 0x7
				if level == 3 { // the last-level cache is shared by all cores
					e.EAX |= uint32(n-1) << 14
				}
			}
		case leafThermal:
			// No digital thermal sensor or power management for the guest;
			// keep only ARAT (EAX[2]), which tells Linux the LAPIC timer
			// keeps running in deep C-states.
			e.EAX &= 1 << 2
			e.EBX, e.ECX, e.EDX = 0, 0, 0
		case leafExtTopology, leafExtTopologyV2:
			// Subleaf 0: SMT level (1 thread per core); subleaf 1: core
			// level (n cores); deeper subleaves: invalid.
			e.EDX = uint32(id)
			switch e.Index {
			case 0:
				e.EAX, e.EBX, e.ECX = 0, 1, 1<<8|0
			case 1:
				e.EAX, e.EBX, e.ECX = uint32(bitsFor(n)), uint32(n), 2<<8|1
			default:
				e.EAX, e.EBX, e.ECX = 0, 0, e.Index&0xff
			}
		case leafAMDExtFeatures:
			if n > 1 {
				e.ECX |= amdCmpLegacy
			} else {
				e.ECX &^= amdCmpLegacy
			}
		case leafAMDSizes:
			// ECX[7:0]: number of physical cores - 1; [15:12]: APIC ID size.
			e.ECX = e.ECX&^0xf0ff | uint32(n-1)&0xff | uint32(bitsFor(n))<<12
		case leafAMDTopology:
			// EAX: extended APIC ID; EBX[7:0] compute unit id, [15:8] threads per unit - 1; ECX: node id 0.
			e.EAX = uint32(id)
			e.EBX = uint32(id) & 0xff
			e.ECX = 0
		}
		out = append(out, e)
	}
	return out
}

// bitsFor returns the number of APIC ID bits needed to number n units.
func bitsFor(n int) int {
	b := 0
	for (1 << b) < n {
		b++
	}
	return b
}
