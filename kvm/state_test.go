package kvm

import (
	"testing"
	"unsafe"
)

// The snapshot ioctls' numbers and struct layouts, checked against
// <linux/kvm.h> (Linux 6.1 uapi, compiled with gcc on x86-64).
func TestStateIoctlNumbers(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"KVM_GET_IRQCHIP", kvmGetIRQChip, 0xc208ae62},
		{"KVM_SET_IRQCHIP", kvmSetIRQChip, 0x8208ae63},
		{"KVM_SET_CLOCK", kvmSetClock, 0x4030ae7b},
		{"KVM_GET_CLOCK", kvmGetClock, 0x8030ae7c},
		{"KVM_GET_PIT2", kvmGetPIT2, 0x8070ae9f},
		{"KVM_SET_PIT2", kvmSetPIT2, 0x4070aea0},
		{"KVM_SET_TSC_KHZ", kvmSetTSCKHz, 0xaea2},
		{"KVM_SET_MP_STATE", kvmSetMPState, 0x4004ae99},
		{"KVM_GET_VCPU_EVENTS", kvmGetVCPUEvents, 0x8040ae9f},
		{"KVM_SET_VCPU_EVENTS", kvmSetVCPUEvents, 0x4040aea0},
		{"KVM_GET_DEBUGREGS", kvmGetDebugRegs, 0x8080aea1},
		{"KVM_SET_DEBUGREGS", kvmSetDebugRegs, 0x4080aea2},
		{"KVM_GET_XSAVE", kvmGetXSave, 0x9000aea4},
		{"KVM_SET_XSAVE", kvmSetXSave, 0x5000aea5},
		{"KVM_GET_XCRS", kvmGetXCRs, 0x8188aea6},
		{"KVM_SET_XCRS", kvmSetXCRs, 0x4188aea7},
		{"KVM_KVMCLOCK_CTRL", kvmKVMClockCtrl, 0xaead},
		{"KVM_GET_XSAVE2", kvmGetXSave2, 0x9000aecf},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
}

func TestStateStructLayouts(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(kvm_irqchip)", unsafe.Sizeof(IRQChip{}), 520},
		{"sizeof(kvm_clock_data)", unsafe.Sizeof(ClockData{}), 48},
		{"sizeof(kvm_pit_state2)", unsafe.Sizeof(PITState2{}), 112},
		{"sizeof(kvm_pit_channel_state)", unsafe.Sizeof(PITChannel{}), 24},
		{"sizeof(kvm_vcpu_events)", unsafe.Sizeof(VCPUEvents{}), 64},
		{"sizeof(kvm_debugregs)", unsafe.Sizeof(DebugRegs{}), 128},
		{"sizeof(kvm_xcrs)", unsafe.Sizeof(XCRs{}), 392},
		{"sizeof(kvm_mp_state)", unsafe.Sizeof(MPState{}), 4},
		{"offsetof(kvm_pit_state2, flags)", unsafe.Offsetof(PITState2{}.Flags), 72},
		{"offsetof(kvm_vcpu_events, sipi_vector)", unsafe.Offsetof(VCPUEvents{}.SIPIVector), 16},
		{"offsetof(kvm_vcpu_events, flags)", unsafe.Offsetof(VCPUEvents{}.Flags), 20},
		{"offsetof(kvm_vcpu_events, smi)", unsafe.Offsetof(VCPUEvents{}.SMI), 24},
		{"offsetof(kvm_vcpu_events, exception_payload)", unsafe.Offsetof(VCPUEvents{}.ExceptionPayload), 56},
		{"offsetof(kvm_clock_data, realtime)", unsafe.Offsetof(ClockData{}.Realtime), 16},
		{"offsetof(kvm_clock_data, host_tsc)", unsafe.Offsetof(ClockData{}.HostTSC), 24},
		{"offsetof(kvm_xcrs, xcrs)", unsafe.Offsetof(XCRs{}.XCRs), 8},
		{"offsetof(kvm_debugregs, flags)", unsafe.Offsetof(DebugRegs{}.Flags), 48},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}
