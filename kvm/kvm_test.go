package kvm

import (
	"testing"
	"unsafe"
)

// The ioctl numbers and struct layouts below were checked against
// <linux/kvm.h> (Linux 6.1 uapi): a mismatch makes the kernel read or write
// the wrong number of bytes.
func TestIoctlNumbers(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"KVM_GET_API_VERSION", kvmGetAPIVersion, 0xae00},
		{"KVM_CREATE_VM", kvmCreateVM, 0xae01},
		{"KVM_GET_MSR_INDEX_LIST", kvmGetMSRIndexList, 0xc004ae02},
		{"KVM_CHECK_EXTENSION", kvmCheckExtension, 0xae03},
		{"KVM_GET_VCPU_MMAP_SIZE", kvmGetVCPUMmapSize, 0xae04},
		{"KVM_GET_SUPPORTED_CPUID", kvmGetSupportedCPUID, 0xc008ae05},
		{"KVM_CREATE_VCPU", kvmCreateVCPU, 0xae41},
		{"KVM_SET_USER_MEMORY_REGION", kvmSetUserMemoryRegion, 0x4020ae46},
		{"KVM_SET_TSS_ADDR", kvmSetTSSAddr, 0xae47},
		{"KVM_SET_IDENTITY_MAP_ADDR", kvmSetIdentityMapAddr, 0x4008ae48},
		{"KVM_CREATE_IRQCHIP", kvmCreateIRQChip, 0xae60},
		{"KVM_IRQ_LINE", kvmIRQLine, 0x4008ae61},
		{"KVM_IRQFD", kvmIRQFD, 0x4020ae76},
		{"KVM_CREATE_PIT2", kvmCreatePIT2, 0x4040ae77},
		{"KVM_IOEVENTFD", kvmIOEventFD, 0x4040ae79},
		{"KVM_RUN", kvmRun, 0xae80},
		{"KVM_GET_REGS", kvmGetRegs, 0x8090ae81},
		{"KVM_SET_REGS", kvmSetRegs, 0x4090ae82},
		{"KVM_GET_SREGS", kvmGetSregs, 0x8138ae83},
		{"KVM_SET_SREGS", kvmSetSregs, 0x4138ae84},
		{"KVM_GET_MSRS", kvmGetMSRs, 0xc008ae88},
		{"KVM_SET_MSRS", kvmSetMSRs, 0x4008ae89},
		{"KVM_GET_FPU", kvmGetFPU, 0x81a0ae8c},
		{"KVM_SET_FPU", kvmSetFPU, 0x41a0ae8d},
		{"KVM_GET_LAPIC", kvmGetLAPIC, 0x8400ae8e},
		{"KVM_SET_LAPIC", kvmSetLAPIC, 0x4400ae8f},
		{"KVM_SET_CPUID2", kvmSetCPUID2, 0x4008ae90},
		{"KVM_GET_TSC_KHZ", kvmGetTSCKHz, 0xaea3},
		{"KVM_GET_STATS_FD", kvmGetStatsFD, 0xaece},
		{"KVM_GET_MP_STATE", kvmGetMPState, 0x8004ae98},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
}

func TestStructSizes(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_regs", unsafe.Sizeof(Regs{}), 144},
		{"kvm_sregs", unsafe.Sizeof(Sregs{}), 312},
		{"kvm_fpu", unsafe.Sizeof(FPU{}), 416},
		{"kvm_lapic_state", unsafe.Sizeof(LAPICState{}), 1024},
		{"kvm_cpuid_entry2", unsafe.Sizeof(CPUIDEntry{}), 40},
		{"kvm_msr_entry", unsafe.Sizeof(MSR{}), 16},
		{"kvm_userspace_memory_region", unsafe.Sizeof(userspaceMemoryRegion{}), 32},
		{"kvm_irqfd", unsafe.Sizeof(irqfd{}), 32},
		{"kvm_ioeventfd", unsafe.Sizeof(ioeventfd{}), 64},
		{"kvm_pit_config", unsafe.Sizeof(pitConfig{}), 64},
		{"kvm_irq_level", unsafe.Sizeof(irqLevel{}), 8},
		{"kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"kvm_dtable", unsafe.Sizeof(DTable{}), 16},
	} {
		if tc.got != tc.want {
			t.Errorf("sizeof(%s) = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
	if off := unsafe.Offsetof(Sregs{}.CR0); off != 224 {
		t.Errorf("offsetof(kvm_sregs, cr0) = %d, want 224", off)
	}
}

func TestExitReasonString(t *testing.T) {
	for r, want := range map[ExitReason]string{ExitIO: "io", ExitMMIO: "mmio", ExitSystemEvent: "system-event", 99: "exit-99"} {
		if got := r.String(); got != want {
			t.Errorf("ExitReason(%d) = %q, want %q", r, got, want)
		}
	}
}
