package guestmem

import (
	"sync/atomic"
	"unsafe"
)

// ptr32 turns a 4-byte slice of guest RAM into a *uint32 for sync/atomic.
// Safe because callers pass a slice from Slice(gpa, 4) with gpa 4-aligned:
// the mapping is page aligned, so the host address is 4-aligned too, and the
// slice keeps the mapping's bytes in range.
func ptr32(s []byte) *uint32 { return (*uint32)(unsafe.Pointer(&s[0])) }

// ptr16 is ptr32 for 2-byte, 2-aligned slices.
func ptr16(s []byte) *uint16 { return (*uint16)(unsafe.Pointer(&s[0])) }

// loadUint16 and storeUint16: sync/atomic has no 16-bit operations, so
// they work on the naturally aligned 32-bit word that contains the 16-bit
// field (guest mappings are page aligned, so that word is inside the same
// page and the same mapping). The store uses compare-and-swap so that a
// concurrent guest write to the other half of the word is never lost.
func word(p *uint16) (*uint32, uint) {
	a := uintptr(unsafe.Pointer(p))
	return (*uint32)(unsafe.Add(unsafe.Pointer(p), -int(a&3))), uint(a&3) * 8
}

func loadUint16(p *uint16) uint16 {
	w, shift := word(p)
	return uint16(atomic.LoadUint32(w) >> shift)
}

func storeUint16(p *uint16, v uint16) {
	w, shift := word(p)
	for {
		old := atomic.LoadUint32(w)
		nw := old&^(0xffff<<shift) | uint32(v)<<shift
		if atomic.CompareAndSwapUint32(w, old, nw) {
			return
		}
	}
}
