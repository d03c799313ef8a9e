//go:build !amd64

package guestmem

import "sync/atomic"

// storeUint16 writes the 16-bit field at p with a compare-and-swap of the
// naturally aligned 32-bit word that holds it (sync/atomic has no 16-bit
// operations; the word lies inside the same page and mapping), so that a
// concurrent guest write to the other half is never lost. A guest that
// keeps writing that half can make it retry: vessel runs on x86-64, where
// store16_unsafe_amd64.go stores with one locked instruction instead.
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
