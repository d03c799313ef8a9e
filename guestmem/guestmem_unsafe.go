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
