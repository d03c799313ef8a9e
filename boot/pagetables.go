package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/vesselvm/vessel/guestmem"
)

// Page-table entry bits (Intel SDM vol. 3, 4.5).
const (
	ptePresent  = 1 << 0
	pteWritable = 1 << 1
	ptePageSize = 1 << 7 // in a page-directory entry: maps a 2 MiB page
)

const (
	hugePageSize = 2 << 20
	pdCount      = IdentityMapSize >> 30 // one page directory per GiB
)

// writePageTables builds the identity map the 64-bit boot protocol needs
// (boot.rst: "the range with setup_header.init_size from start address of
// loaded kernel and zero page and command line buffer get ident mapping"):
// one PML4 entry, pdCount PDPT entries and 2 MiB pages covering
// [0, IdentityMapSize).
func writePageTables(mem *guestmem.Memory) error {
	le := binary.LittleEndian
	pml4 := make([]byte, pageSize)
	le.PutUint64(pml4, PDPTAddr|ptePresent|pteWritable)
	pdpt := make([]byte, pageSize)
	for i := range pdCount {
		le.PutUint64(pdpt[i*8:], uint64(PDAddr+i*pageSize)|ptePresent|pteWritable)
	}
	pds := make([]byte, pdCount*pageSize)
	for i := range pdCount * 512 {
		le.PutUint64(pds[i*8:], uint64(i)*hugePageSize|ptePresent|pteWritable|ptePageSize)
	}
	for _, t := range []struct {
		gpa uint64
		b   []byte
	}{{PML4Addr, pml4}, {PDPTAddr, pdpt}, {PDAddr, pds}} {
		if _, err := mem.WriteAt(t.b, t.gpa); err != nil {
			return fmt.Errorf("page tables at %#x: %w", t.gpa, err)
		}
	}
	return nil
}
