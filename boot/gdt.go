package boot

import (
	"encoding/binary"

	"github.com/vesselvm/vessel/guestmem"
)

// GDT selectors. boot.rst ("32-bit Boot Protocol", "64-bit Boot Protocol")
// requires __BOOT_CS = 0x10 and __BOOT_DS = 0x18; the PVH ABI leaves the
// selector values unspecified, so PVH uses the same layout.
const (
	// BootCodeSelector is __BOOT_CS (GDT index 2).
	BootCodeSelector = 0x10
	// BootDataSelector is __BOOT_DS (GDT index 3), used for DS, ES, SS, FS
	// and GS.
	BootDataSelector = 0x18
	// BootTSSSelector selects the TSS descriptor (GDT indices 4 and 5: a
	// system descriptor is 16 bytes in long mode).
	BootTSSSelector = 0x20
)

// gdtEntries is null, unused, code, data and the two halves of the TSS.
const (
	gdtEntries = 6
	gdtLimit   = gdtEntries*8 - 1
)

// Segment types (Intel SDM vol. 3, 3.4.5.1 and 3.5).
const (
	typeCodeExecReadAccessed = 0xB
	typeDataReadWriteAccesed = 0x3
	typeTSS32Busy            = 0xB // system descriptor (S=0)
)

// codeSegment is __BOOT_CS: flat 4 GiB execute/read, 64-bit (L=1, D=0) for
// the 64-bit boot protocol, 32-bit (D=1) for PVH. Its descriptor is
// 0x00AF9B000000FFFF or 0x00CF9B000000FFFF.
func codeSegment(p Protocol) Segment {
	s := Segment{
		Limit:    0xFFFF_FFFF,
		Selector: BootCodeSelector,
		Type:     typeCodeExecReadAccessed,
		Present:  1,
		S:        1,
		G:        1,
	}
	if p == PVH {
		s.DB = 1
	} else {
		s.L = 1
	}
	return s
}

// dataSegment is __BOOT_DS: flat 4 GiB read/write, descriptor
// 0x00CF93000000FFFF.
func dataSegment() Segment {
	return Segment{
		Limit:    0xFFFF_FFFF,
		Selector: BootDataSelector,
		Type:     typeDataReadWriteAccesed,
		Present:  1,
		DB:       1,
		S:        1,
		G:        1,
	}
}

// tssSegment is a busy TSS at base 0 with limit 0x67, as head.S documents
// for PVH ("tr: must be a 32-bit TSS (active) with a base of '0' and a
// limit of '0x67'"); long mode accepts the same type.
func tssSegment() Segment {
	return Segment{
		Limit:    0x67,
		Selector: BootTSSSelector,
		Type:     typeTSS32Busy,
		Present:  1,
	}
}

// descriptor encodes s as an 8-byte segment descriptor (Intel SDM vol. 3,
// 3.4.5). The base's bits 32-63 (for a 16-byte system descriptor) go in the
// following entry and are zero here.
func descriptor(s Segment) uint64 {
	limit := uint64(s.Limit)
	if s.G != 0 {
		limit >>= 12
	}
	b := s.Base & 0xFFFF_FFFF
	return limit&0xFFFF |
		(b&0xFF_FFFF)<<16 |
		uint64(s.Type&0xF)<<40 |
		uint64(s.S&1)<<44 |
		uint64(s.DPL&3)<<45 |
		uint64(s.Present&1)<<47 |
		(limit>>16&0xF)<<48 |
		uint64(s.AVL&1)<<52 |
		uint64(s.L&1)<<53 |
		uint64(s.DB&1)<<54 |
		uint64(s.G&1)<<55 |
		(b>>24&0xFF)<<56
}

// decodeDescriptor is the inverse of descriptor, giving the descriptor-cache
// form KVM expects (limit scaled to bytes when G=1).
func decodeDescriptor(d uint64, selector uint16) Segment {
	limit := uint32(d&0xFFFF | (d>>48&0xF)<<16)
	g := uint8(d >> 55 & 1)
	if g != 0 {
		limit = limit<<12 | 0xFFF
	}
	return Segment{
		Base:     d>>16&0xFF_FFFF | (d>>56&0xFF)<<24,
		Limit:    limit,
		Selector: selector,
		Type:     uint8(d >> 40 & 0xF),
		S:        uint8(d >> 44 & 1),
		DPL:      uint8(d >> 45 & 3),
		Present:  uint8(d >> 47 & 1),
		AVL:      uint8(d >> 52 & 1),
		L:        uint8(d >> 53 & 1),
		DB:       uint8(d >> 54 & 1),
		G:        g,
	}
}

// writeGDT writes the boot GDT for protocol p at GDTAddr.
func writeGDT(mem *guestmem.Memory, p Protocol) error {
	var gdt [gdtEntries * 8]byte
	binary.LittleEndian.PutUint64(gdt[BootCodeSelector:], descriptor(codeSegment(p)))
	binary.LittleEndian.PutUint64(gdt[BootDataSelector:], descriptor(dataSegment()))
	binary.LittleEndian.PutUint64(gdt[BootTSSSelector:], descriptor(tssSegment()))
	_, err := mem.WriteAt(gdt[:], GDTAddr)
	return err
}
