package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/vesselvm/vessel/guestmem"
)

// E820Type is the type of a memory map entry (arch/x86/include/uapi/asm/e820.h
// for the zero page; the same values are XEN_HVM_MEMMAP_TYPE_* in
// start_info.h).
type E820Type uint32

// Memory map entry types.
const (
	// E820RAM is usable RAM.
	E820RAM E820Type = 1
	// E820Reserved is memory the guest must not use.
	E820Reserved E820Type = 2
)

// MaxE820Entries is the size of the zero page's e820 table
// (E820_MAX_ENTRIES_ZEROPAGE in bootparam.h); the PVH memory map is held to
// the same bound.
const MaxE820Entries = 128

// E820Entry is one memory map entry.
type E820Entry struct {
	Addr, Size uint64
	Type       E820Type
}

// End returns the first address past the entry.
func (e E820Entry) End() uint64 { return e.Addr + e.Size }

// MemoryMap returns the memory map of mem for the guest: each RAM region
// split so that [EBDAStart, HighMemStart) (EBDA, VGA hole, BIOS area, where
// the MP table lives) is reserved and the rest is RAM, in ascending order,
// adjacent entries of the same type merged.
func MemoryMap(mem *guestmem.Memory) []E820Entry {
	var out []E820Entry
	add := func(addr, end uint64, t E820Type) {
		if end <= addr {
			return
		}
		if n := len(out); n > 0 && out[n-1].Type == t && out[n-1].End() == addr {
			out[n-1].Size += end - addr
			return
		}
		out = append(out, E820Entry{Addr: addr, Size: end - addr, Type: t})
	}
	for _, r := range mem.Regions() {
		start, end := r.GPA, r.End()
		add(start, min(end, EBDAStart), E820RAM)
		add(max(start, EBDAStart), min(end, HighMemStart), E820Reserved)
		add(max(start, HighMemStart), end, E820RAM)
	}
	return out
}

// boundedMemoryMap is MemoryMap limited to MaxE820Entries.
func boundedMemoryMap(mem *guestmem.Memory) ([]E820Entry, error) {
	m := MemoryMap(mem)
	if len(m) > MaxE820Entries {
		return nil, fmt.Errorf("%d memory map entries, at most %d: %w", len(m), MaxE820Entries, ErrTooManyRegions)
	}
	return m, nil
}

// Sizes of the two on-guest encodings of an entry.
const (
	bootE820EntrySize  = 20 // struct boot_e820_entry (bootparam.h), packed
	hvmMemmapEntrySize = 24 // struct hvm_memmap_table_entry (start_info.h)
)

// putBootE820 encodes e as struct boot_e820_entry.
func putBootE820(b []byte, e E820Entry) {
	binary.LittleEndian.PutUint64(b[0:], e.Addr)
	binary.LittleEndian.PutUint64(b[8:], e.Size)
	binary.LittleEndian.PutUint32(b[16:], uint32(e.Type))
}

// putHVMMemmap encodes e as struct hvm_memmap_table_entry (reserved = 0).
func putHVMMemmap(b []byte, e E820Entry) {
	binary.LittleEndian.PutUint64(b[0:], e.Addr)
	binary.LittleEndian.PutUint64(b[8:], e.Size)
	binary.LittleEndian.PutUint32(b[16:], uint32(e.Type))
	binary.LittleEndian.PutUint32(b[20:], 0)
}
