// Package kvm is vessel's ioctl plumbing for /dev/kvm: typed wrappers around
// the system, VM and vCPU ioctls of the Linux KVM API
// (Documentation/virt/kvm/api.rst). It holds no policy: the vmm package
// decides what to create and how to wire it.
//
// golang.org/x/sys/unix has no KVM constants, so they are written out here,
// in this one file, checked against <linux/kvm.h> by the package's tests.
// Code that passes pointers to the kernel lives in *_unsafe.go files.
package kvm

// kvmio is the ioctl "type" byte of the KVM API.
const kvmio = 0xAE

// ioctl direction bits and field layout (include/uapi/asm-generic/ioctl.h).
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2

	iocNRShift   = 0
	iocTypeShift = 8
	iocSizeShift = 16
	iocDirShift  = 30
)

func ioc(dir, nr, size uintptr) uintptr {
	return dir<<iocDirShift | kvmio<<iocTypeShift | nr<<iocNRShift | size<<iocSizeShift
}

// System ioctls (on the /dev/kvm file descriptor).
var (
	kvmGetAPIVersion     = ioc(iocNone, 0x00, 0)
	kvmCreateVM          = ioc(iocNone, 0x01, 0)
	kvmGetMSRIndexList   = ioc(iocRead|iocWrite, 0x02, 4)
	kvmCheckExtension    = ioc(iocNone, 0x03, 0)
	kvmGetVCPUMmapSize   = ioc(iocNone, 0x04, 0)
	kvmGetSupportedCPUID = ioc(iocRead|iocWrite, 0x05, 8)
)

// VM ioctls.
var (
	kvmCreateVCPU          = ioc(iocNone, 0x41, 0)
	kvmSetUserMemoryRegion = ioc(iocWrite, 0x46, 32)
	kvmSetTSSAddr          = ioc(iocNone, 0x47, 0)
	kvmSetIdentityMapAddr  = ioc(iocWrite, 0x48, 8)
	kvmCreateIRQChip       = ioc(iocNone, 0x60, 0)
	kvmIRQLine             = ioc(iocWrite, 0x61, 8)
	kvmIRQFD               = ioc(iocWrite, 0x76, 32)
	kvmCreatePIT2          = ioc(iocWrite, 0x77, 64)
	kvmIOEventFD           = ioc(iocWrite, 0x79, 64)

	// The VM state a snapshot saves (api.rst 4.26-4.27, 4.29-4.30,
	// 4.80-4.81). KVM_SET_IRQCHIP is _IOR in <linux/kvm.h>, a historic
	// mistake the number keeps.
	kvmGetIRQChip = ioc(iocRead|iocWrite, 0x62, 520)
	kvmSetIRQChip = ioc(iocRead, 0x63, 520)
	kvmSetClock   = ioc(iocWrite, 0x7B, 48)
	kvmGetClock   = ioc(iocRead, 0x7C, 48)
	kvmGetPIT2    = ioc(iocRead, 0x9F, 112)
	kvmSetPIT2    = ioc(iocWrite, 0xA0, 112)
)

// vCPU ioctls.
var (
	kvmRun        = ioc(iocNone, 0x80, 0)
	kvmGetRegs    = ioc(iocRead, 0x81, 144)
	kvmSetRegs    = ioc(iocWrite, 0x82, 144)
	kvmGetSregs   = ioc(iocRead, 0x83, 312)
	kvmSetSregs   = ioc(iocWrite, 0x84, 312)
	kvmGetMSRs    = ioc(iocRead|iocWrite, 0x88, 8)
	kvmSetMSRs    = ioc(iocWrite, 0x89, 8)
	kvmGetFPU     = ioc(iocRead, 0x8C, 416)
	kvmSetFPU     = ioc(iocWrite, 0x8D, 416)
	kvmGetLAPIC   = ioc(iocRead, 0x8E, 1024)
	kvmSetLAPIC   = ioc(iocWrite, 0x8F, 1024)
	kvmSetCPUID2  = ioc(iocWrite, 0x90, 8)
	kvmGetTSCKHz  = ioc(iocNone, 0xA3, 0)
	kvmGetMPState = ioc(iocRead, 0x98, 4)
	kvmGetStatsFD = ioc(iocNone, 0xCE, 0)

	// The vCPU state a snapshot saves besides registers, FPU, MSRs and
	// the local APIC.
	kvmSetMPState    = ioc(iocWrite, 0x99, 4)
	kvmGetVCPUEvents = ioc(iocRead, 0x9F, 64)
	kvmSetVCPUEvents = ioc(iocWrite, 0xA0, 64)
	kvmGetDebugRegs  = ioc(iocRead, 0xA1, 128)
	kvmSetDebugRegs  = ioc(iocWrite, 0xA2, 128)
	kvmSetTSCKHz     = ioc(iocNone, 0xA2, 0)
	kvmGetXSave      = ioc(iocRead, 0xA4, 4096)
	kvmSetXSave      = ioc(iocWrite, 0xA5, 4096)
	kvmGetXCRs       = ioc(iocRead, 0xA6, 392)
	kvmSetXCRs       = ioc(iocWrite, 0xA7, 392)
	kvmKVMClockCtrl  = ioc(iocNone, 0xAD, 0)
	kvmGetXSave2     = ioc(iocRead, 0xCF, 4096)
)

// Cap is a KVM capability number for CheckExtension (KVM_CAP_*).
type Cap uintptr

// Capabilities vessel checks for.
const (
	CapIRQChip        Cap = 0
	CapUserMemory     Cap = 3
	CapSetTSSAddr     Cap = 4
	CapExtCPUID       Cap = 7
	CapNRVCPUs        Cap = 9
	CapIRQFD          Cap = 32
	CapPIT2           Cap = 33
	CapIOEventFD      Cap = 36
	CapSetIdentityMap Cap = 37
	CapGetTSCKHz      Cap = 61
	CapMaxVCPUs       Cap = 66
	CapTSCDeadline    Cap = 72
	CapImmediateExit  Cap = 136

	// Capabilities a snapshot or a restore needs.
	CapMPState      Cap = 14
	CapPITState2    Cap = 35
	CapAdjustClock  Cap = 39
	CapVCPUEvents   Cap = 41
	CapDebugRegs    Cap = 50
	CapXSave        Cap = 55
	CapXCRs         Cap = 56
	CapTSCControl   Cap = 60
	CapKVMClockCtrl Cap = 76
	CapXSave2       Cap = 208
)

// Flags of struct kvm_clock_data (KVM_CAP_ADJUST_CLOCK's answer says
// which KVM_GET_CLOCK fills).
const (
	ClockTSCStable = 1 << 1 // KVM_CLOCK_TSC_STABLE
	ClockRealtime  = 1 << 2 // KVM_CLOCK_REALTIME
	ClockHostTSC   = 1 << 3 // KVM_CLOCK_HOST_TSC
)

// Interrupt controllers of KVM_GET_IRQCHIP (chip_id).
const (
	IRQChipPICMaster = 0
	IRQChipPICSlave  = 1
	IRQChipIOAPIC    = 2
)

// APIVersion is the only KVM API version there is (KVM_API_VERSION).
const APIVersion = 12

// ExitReason says why KVM_RUN returned to userspace (KVM_EXIT_*).
type ExitReason uint32

// Exit reasons vessel handles.
const (
	ExitUnknown       ExitReason = 0
	ExitException     ExitReason = 1
	ExitIO            ExitReason = 2
	ExitHypercall     ExitReason = 3
	ExitDebug         ExitReason = 4
	ExitHLT           ExitReason = 5
	ExitMMIO          ExitReason = 6
	ExitIRQWindowOpen ExitReason = 7
	ExitShutdown      ExitReason = 8
	ExitFailEntry     ExitReason = 9
	ExitIntr          ExitReason = 10
	ExitInternalError ExitReason = 17
	ExitSystemEvent   ExitReason = 24
)

var exitNames = map[ExitReason]string{
	ExitUnknown: "unknown", ExitException: "exception", ExitIO: "io",
	ExitHypercall: "hypercall", ExitDebug: "debug", ExitHLT: "hlt",
	ExitMMIO: "mmio", ExitIRQWindowOpen: "irq-window-open",
	ExitShutdown: "shutdown", ExitFailEntry: "fail-entry", ExitIntr: "intr",
	ExitInternalError: "internal-error", ExitSystemEvent: "system-event",
}

// String returns the KVM name of the exit reason.
func (e ExitReason) String() string {
	if s, ok := exitNames[e]; ok {
		return s
	}
	return "exit-" + itoa(uint64(e))
}

// System event types in a KVM_EXIT_SYSTEM_EVENT exit.
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
)

// Offsets into struct kvm_run (include/uapi/linux/kvm.h, x86-64 layout).
const (
	runImmediateExit = 1
	runExitReason    = 8
	runUnion         = 32 // start of the exit-specific union

	// io: __u8 direction; __u8 size; __u16 port; __u32 count; __u64 data_offset
	runIODirection  = runUnion + 0
	runIOSize       = runUnion + 1
	runIOPort       = runUnion + 2
	runIOCount      = runUnion + 4
	runIODataOffset = runUnion + 8

	// mmio: __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write
	runMMIOPhysAddr = runUnion + 0
	runMMIOData     = runUnion + 8
	runMMIOLen      = runUnion + 16
	runMMIOIsWrite  = runUnion + 20

	// system_event: __u32 type; __u32 ndata; __u64 data[16]
	runSystemEventType = runUnion + 0

	// internal: __u32 suberror; __u32 ndata; __u64 data[16]
	runInternalSuberror = runUnion + 0

	// fail_entry: __u64 hardware_entry_failure_reason; __u32 cpu
	runFailEntryReason = runUnion + 0

	runMinSize = 0x930 // sizeof(struct kvm_run)
)

// I/O exit directions.
const (
	ioIn  = 0
	ioOut = 1
)

// Flags for KVM_IOEVENTFD and KVM_IRQFD.
const (
	ioeventfdFlagDatamatch = 1 << 0
	ioeventfdFlagPIO       = 1 << 1
	ioeventfdFlagDeassign  = 1 << 2
	irqfdFlagDeassign      = 1 << 0
)

// pitSpeakerDummy (KVM_PIT_SPEAKER_DUMMY) makes the in-kernel PIT emulate
// port 0x61 too, so the guest's PIT calibration reads never exit.
const pitSpeakerDummy = 1

// CPUID entry flag: the leaf's value depends on ECX (KVM_CPUID_FLAG_SIGNIFCANT_INDEX).
const CPUIDFlagSignificantIndex = 1 << 0

// maxCPUIDEntries bounds the KVM_GET_SUPPORTED_CPUID buffer (KVM allows 256).
const maxCPUIDEntries = 256

func itoa(v uint64) string {
	if v == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for v > 0 {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return string(b[i:])
}

// RunningIoctls are the ioctl requests vessel makes on KVM's descriptors
// once a VM runs: KVM_RUN, interrupts, the ioeventfds and irqfds devices
// register when the driver activates them, the registers and state each
// vCPU sets as it starts and reads for a crash report, the TSC frequency
// and statistics. Creating VMs,
// vCPUs, memory slots or CPUID is not among them: a seccomp allow-list
// (internal/seccomp) built from this list refuses them to a running VMM.
func RunningIoctls() []uintptr {
	return []uintptr{
		kvmRun, kvmIRQLine, kvmIRQFD, kvmIOEventFD,
		kvmGetRegs, kvmSetRegs, kvmGetSregs, kvmSetSregs, kvmGetMSRs, kvmSetMSRs,
		kvmGetFPU, kvmSetFPU, kvmGetLAPIC, kvmSetLAPIC, kvmGetMPState,
		kvmGetTSCKHz, kvmGetStatsFD, kvmCheckExtension,
		// A snapshot of a running VM (vmm.Snapshot) reads its state,
		// and the host's CPUID and MSR list (read-only queries of
		// /dev/kvm) to record what its vCPUs were given.
		kvmGetSupportedCPUID, kvmGetMSRIndexList,
		kvmGetIRQChip, kvmGetClock, kvmGetPIT2, kvmGetVCPUEvents, kvmGetDebugRegs,
		kvmGetXSave, kvmGetXSave2, kvmGetXCRs, kvmKVMClockCtrl,
	}
}
