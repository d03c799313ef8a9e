package kvm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl issues an ioctl whose argument is an integer (or nothing). It
// retries on EINTR only when retry is set: KVM_RUN must see EINTR.
func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		if errno == unix.EINTR && req != kvmRun {
			continue
		}
		if errno != 0 {
			return r, errno
		}
		return r, nil
	}
}

// ioctlPtr issues an ioctl whose argument is a pointer to a struct the
// kernel reads or fills. Safe because p points to a Go value of exactly the
// size encoded in req (checked by the package tests against <linux/kvm.h>),
// it is kept alive for the duration of the call by being an argument of
// Syscall (the unsafe.Pointer-to-uintptr conversion happens in the call
// expression, which the Go compiler treats as keeping the object alive and
// unmoved), and the kernel does not retain it.
func ioctlPtr[T any](fd int, req uintptr, p *T) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(p)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

// getSupportedCPUID calls KVM_GET_SUPPORTED_CPUID with a buffer large
// enough for maxCPUIDEntries. struct kvm_cpuid2 is a header (nent, padding)
// followed by a flexible array of entries: we lay it out in one Go struct so
// the kernel writes only inside it.
func getSupportedCPUID(fd int) ([]CPUIDEntry, error) {
	var buf struct {
		nent    uint32
		_       uint32
		entries [maxCPUIDEntries]CPUIDEntry
	}
	buf.nent = maxCPUIDEntries
	if err := ioctlPtr(fd, kvmGetSupportedCPUID, &buf); err != nil {
		return nil, err
	}
	n := min(int(buf.nent), maxCPUIDEntries)
	return append([]CPUIDEntry(nil), buf.entries[:n]...), nil
}

// setCPUID2 calls KVM_SET_CPUID2 with the same header-plus-array layout.
func setCPUID2(fd int, entries []CPUIDEntry) error {
	var buf struct {
		nent    uint32
		_       uint32
		entries [maxCPUIDEntries]CPUIDEntry
	}
	if len(entries) > maxCPUIDEntries {
		return unix.E2BIG
	}
	buf.nent = uint32(len(entries))
	copy(buf.entries[:], entries)
	return ioctlPtr(fd, kvmSetCPUID2, &buf)
}

// maxMSRs bounds one KVM_SET_MSRS/KVM_GET_MSRS call.
const maxMSRs = 64

// msrs calls KVM_SET_MSRS or KVM_GET_MSRS (struct kvm_msrs: nmsrs, pad,
// entries[]). It returns how many entries the kernel processed.
func msrs(fd int, req uintptr, entries []MSR) (int, error) {
	var buf struct {
		n       uint32
		_       uint32
		entries [maxMSRs]MSR
	}
	if len(entries) > maxMSRs {
		return 0, unix.E2BIG
	}
	buf.n = uint32(len(entries))
	copy(buf.entries[:], entries)
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&buf)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		copy(entries, buf.entries[:len(entries)])
		return int(r), nil
	}
}

// getMSRIndexList calls KVM_GET_MSR_INDEX_LIST (struct kvm_msr_list:
// nmsrs, indices[]).
func getMSRIndexList(fd int) ([]uint32, error) {
	var buf struct {
		n       uint32
		indices [1024]uint32
	}
	buf.n = uint32(len(buf.indices))
	if err := ioctlPtr(fd, kvmGetMSRIndexList, &buf); err != nil {
		return nil, err
	}
	n := min(int(buf.n), len(buf.indices))
	return append([]uint32(nil), buf.indices[:n]...), nil
}

// hostAddr returns the host virtual address of a guest RAM mapping for
// KVM_SET_USER_MEMORY_REGION. Safe: the mapping comes from mmap (not the Go
// heap), so it never moves, and the caller keeps it mapped for as long as
// the VM uses the slot.
func hostAddr(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&b[0]))) }

// setImmediateExit writes kvm_run.immediate_exit. The run page is a shared
// mmap of the vCPU; the byte is read by the kernel on entry to KVM_RUN. A
// plain store is enough because the kick that follows (tgkill) is a full
// barrier, and a KVM_RUN that starts later reads the byte from memory.
func setImmediateExit(run []byte, v byte) {
	p := (*byte)(unsafe.Pointer(&run[runImmediateExit]))
	*p = v
}

// ioctlBytes issues an ioctl whose argument is a byte buffer the kernel
// reads or fills: KVM_GET_XSAVE2 and KVM_SET_XSAVE, whose size
// KVM_CAP_XSAVE2 gives at run time. Safe because the callers pass a
// buffer at least as large as that size (and as the XSaveSize encoded in
// req), Syscall's argument keeps it alive and unmoved for the call, and
// the kernel does not retain it.
func ioctlBytes(fd int, req uintptr, b []byte) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&b[0])))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}
