package vmm

import (
	"encoding/binary"

	"github.com/vesselvm/vessel/guestmem"
)

// Paging bits a diagnosis needs to walk a stopped guest's page tables
// (Intel SDM vol. 3, 4.5 "4-level paging and 5-level paging"; AMD APM
// vol. 2, 5.3).
const (
	cr0PG      = 1 << 31
	cr4LA57    = 1 << 12
	eferLMA    = 1 << 10
	ptePresent = 1 << 0
	ptePS      = 1 << 7
	// pteAddr is the physical address field of CR3 and of a
	// paging-structure entry (bits 51:12).
	pteAddr = 0x000f_ffff_ffff_f000
)

// translate maps the guest virtual address va to a guest physical one
// through the 4- or 5-level page tables at cr3, reading them from mem
// (bounds-checked: a table outside guest RAM ends the walk). It reports
// false for an address that is not mapped. The walk is for reading a
// hung guest's stack in a diagnosis, so it honours neither access
// rights nor the caches the CPU may hold.
func translate(mem *guestmem.Memory, cr3, cr4, va uint64) (uint64, bool) {
	levels := 4
	if cr4&cr4LA57 != 0 {
		levels = 5
	}
	table := cr3 & pteAddr
	for l := levels; l >= 1; l-- {
		shift := uint(12 + 9*(l-1))
		idx := va >> shift & 0x1ff
		var e [8]byte
		if _, err := mem.ReadAt(e[:], table+8*idx); err != nil {
			return 0, false
		}
		pte := binary.LittleEndian.Uint64(e[:])
		if pte&ptePresent == 0 {
			return 0, false
		}
		if l >= 4 && pte&ptePS != 0 {
			return 0, false // reserved in PML4 and PML5 entries: the CPU faults
		}
		// A large page: 1 GiB at level 3, 2 MiB at level 2.
		if l == 1 || pte&ptePS != 0 {
			mask := uint64(1)<<shift - 1
			return pte&pteAddr&^mask | va&mask, true
		}
		table = pte & pteAddr
	}
	return 0, false
}
