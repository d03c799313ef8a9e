package guestmem

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ptr32 turns a 4-byte slice of guest RAM into a *uint32 for sync/atomic.
// Safe because callers pass a slice from Slice(gpa, 4) with gpa 4-aligned:
// the mapping is page aligned, so the host address is 4-aligned too, and the
// slice keeps the mapping's bytes in range.
func ptr32(s []byte) *uint32 { return (*uint32)(unsafe.Pointer(&s[0])) }

// ptr16 is ptr32 for 2-byte, 2-aligned slices.
func ptr16(s []byte) *uint16 { return (*uint16)(unsafe.Pointer(&s[0])) }

// word returns the naturally aligned 32-bit word that contains the 16-bit
// field at p, and the field's shift in it. sync/atomic has no 16-bit
// operations; guest mappings are page aligned, so that word is inside the
// same page and the same mapping.
func word(p *uint16) (*uint32, uint) {
	a := uintptr(unsafe.Pointer(p))
	return (*uint32)(unsafe.Add(unsafe.Pointer(p), -int(a&3))), uint(a&3) * 8
}

// loadUint16 reads the 16-bit field at p with an atomic load of its word.
// storeUint16 is per architecture (store16_unsafe_*.go).
func loadUint16(p *uint16) uint16 {
	w, shift := word(p)
	return uint16(atomic.LoadUint32(w) >> shift)
}

// hugeAlign is the alignment of anonymous guest RAM in the host: x86-64's
// 2 MiB huge page. KVM maps a guest range with a huge page only where the
// guest-physical and the host address agree modulo the huge page's size
// (arch/x86/kvm/mmu: a memory slot whose base_gfn and userspace_addr
// differ there gets no large pages at all), and the kernel gives an
// anonymous mapping transparent huge pages only in 2 MiB-aligned ranges.
// Regions start on 2 MiB guest-physical boundaries, so an aligned host
// mapping lets both apply, as QEMU's RAM blocks do (QEMU_VMALLOC_ALIGN).
const hugeAlign = 2 << 20

// mapAnon returns size bytes of private anonymous memory (not reserved
// against overcommit) at a host address aligned to hugeAlign. It reserves
// size+hugeAlign bytes of address space, maps the memory over the first
// aligned address with MAP_FIXED, and gives back the ends.
//
// The returned slice is outside the Go heap: only unmap must release it.
// Building it from the mapping's address is safe because the mapping is
// size bytes long and stays mapped until unmap.
func mapAnon(size uint64) ([]byte, error) {
	span := uintptr(size) + hugeAlign
	res, err := unix.MmapPtr(-1, 0, nil, span, unix.PROT_NONE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, err
	}
	head := -uintptr(res) & (hugeAlign - 1) // bytes up to the first aligned address
	start := unsafe.Add(res, head)
	p, err := unix.MmapPtr(-1, 0, start, uintptr(size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE|unix.MAP_FIXED)
	if err != nil {
		unix.MunmapPtr(res, span)
		return nil, err
	}
	if head > 0 {
		unix.MunmapPtr(res, head)
	}
	if tail := span - head - uintptr(size); tail > 0 {
		unix.MunmapPtr(unsafe.Add(start, uintptr(size)), tail)
	}
	return unsafe.Slice((*byte)(p), size), nil
}

// mapFile maps size bytes of f's descriptor fd from off, private: the
// pages a writer touches become its own.
func mapFile(fd int, off int64, size uint64) ([]byte, error) {
	p, err := unix.MmapPtr(fd, off, nil, uintptr(size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_NORESERVE)
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*byte)(p), size), nil
}

// unmap releases a mapping made by mapAnon or mapFile. b must be the
// whole slice they returned; it must not be used afterwards.
func unmap(b []byte) error {
	return unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(b)), uintptr(len(b)))
}
