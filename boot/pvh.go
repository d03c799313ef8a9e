package boot

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/vesselvm/vessel/guestmem"
)

// ELF64 layout (System V ABI gABI, "ELF Header" and "Program Header").
const (
	elfMagic      = "\x7fELF"
	elfHeaderSize = 64
	elfPhdrSize   = 56
	// maxNoteSize bounds how much of a PT_NOTE segment is read; vmlinux
	// notes are a few hundred bytes.
	maxNoteSize = 1 << 20
	// pnXNum in e_phnum means the count is stored elsewhere (unsupported).
	pnXNum = 0xFFFF

	// The header fields and values loadPVH takes. They are written out
	// here rather than taken from debug/elf, which would link its DWARF
	// and compression readers into the VMM process (about 50 KB of code
	// resident in every VMM) for a few constants.
	eiClass       = 4  // e_ident[EI_CLASS]
	eiData        = 5  // e_ident[EI_DATA]
	elfClass64    = 2  // ELFCLASS64
	elfData2LSB   = 1  // ELFDATA2LSB
	elfMachineX86 = 62 // EM_X86_64
	elfTypeExec   = 2  // ET_EXEC
	ptLoad        = 1  // PT_LOAD
	ptNote        = 4  // PT_NOTE
)

// PVH constants (include/xen/interface/elfnote.h, start_info.h).
const (
	xenElfnotePhys32Entry = 18
	xenNoteName           = "Xen\x00"
	hvmStartMagic         = 0x336ec578
	hvmStartVersion       = 1 // adds memmap_paddr and memmap_entries
	hvmStartInfoSize      = 56
	hvmModlistEntrySize   = 32
	// pvhCmdlineMax is COMMAND_LINE_SIZE-1 for x86 (asm/setup.h): PVH has
	// no cmdline_size field, and a longer line would be cut silently.
	pvhCmdlineMax = 2047
)

// phdr is an ELF64 program header.
type phdr struct {
	typ                   uint32 // p_type
	off, paddr            uint64
	filesz, memsz, palign uint64
}

// loadPVH loads an x86-64 ELF vmlinux for the PVH entry
// (arch/x86/platform/pvh/head.S): PT_LOAD segments at their physical
// addresses, hvm_start_info at StartInfoAddr, and the entry point from the
// XEN_ELFNOTE_PHYS32_ENTRY note.
func loadPVH(mem *guestmem.Memory, img image, rd ramdisk, cmdline string) (*Entry, error) {
	phdrs, err := readELF(img)
	if err != nil {
		return nil, fmt.Errorf("boot: ELF: %w", err)
	}
	entry, err := findPVHEntry(img, phdrs)
	if err != nil {
		return nil, fmt.Errorf("boot: ELF: %w", err)
	}

	// Load every PT_LOAD segment at p_paddr, zero-filling p_memsz beyond
	// p_filesz. The PVH entry runs with paging off, so everything must be
	// below 4 GiB, and the first MiB holds the boot structures.
	var kernelEnd uint64
	entryLoaded := false
	for i, p := range phdrs {
		if p.typ != ptLoad || p.memsz == 0 {
			continue
		}
		if p.filesz > p.memsz {
			return nil, fmt.Errorf("boot: ELF segment %d: p_filesz %#x > p_memsz %#x: %w", i, p.filesz, p.memsz, ErrMalformed)
		}
		end, carry := bits.Add64(p.paddr, p.memsz, 0)
		if carry != 0 || p.paddr < HighMemStart || end > IdentityMapSize {
			return nil, fmt.Errorf("boot: ELF segment %d at %#x+%#x is outside [1 MiB, 4 GiB): %w", i, p.paddr, p.memsz, ErrMalformed)
		}
		dst, err := mem.Slice(p.paddr, p.memsz)
		if err != nil {
			return nil, fmt.Errorf("boot: ELF segment %d at %#x+%#x: %w: %w", i, p.paddr, p.memsz, ErrTooLarge, err)
		}
		if err := img.read(dst[:p.filesz], p.off, fmt.Sprintf("segment %d", i)); err != nil {
			return nil, fmt.Errorf("boot: ELF: %w", err)
		}
		clear(dst[p.filesz:])
		kernelEnd = max(kernelEnd, end)
		if entry >= p.paddr && entry < end {
			entryLoaded = true
		}
	}
	if !entryLoaded {
		return nil, fmt.Errorf("boot: ELF: PVH entry %#x is not in a loaded segment: %w", entry, ErrMalformed)
	}

	if err := writeCmdline(mem, cmdline, pvhCmdlineMax); err != nil {
		return nil, fmt.Errorf("boot: PVH command line: %w", err)
	}
	e := &Entry{
		Protocol:  PVH,
		RIP:       entry,
		RBX:       StartInfoAddr,
		CR0:       cr0PE | cr0ET,
		KernelEnd: kernelEnd,
	}
	if rd.size > 0 {
		floor, _ := alignUp(kernelEnd, pageSize) // kernelEnd <= 4 GiB
		addr, err := loadInitrd(mem, rd, floor, IdentityMapSize)
		if err != nil {
			return nil, fmt.Errorf("boot: PVH %w", err)
		}
		e.InitrdAddr, e.InitrdSize = addr, rd.size
	}
	if err := writeStartInfo(mem, e); err != nil {
		return nil, fmt.Errorf("boot: PVH start info: %w", err)
	}
	return e, nil
}

// readELF checks the ELF header and returns the program headers.
func readELF(img image) ([]phdr, error) {
	var h [elfHeaderSize]byte
	if err := img.read(h[:], 0, "ELF header"); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	switch {
	case h[eiClass] != elfClass64:
		return nil, fmt.Errorf("class %d, want ELFCLASS64 (2): %w", h[eiClass], ErrUnsupported)
	case h[eiData] != elfData2LSB:
		return nil, fmt.Errorf("data encoding %d, want little-endian (ELFDATA2LSB, 1): %w", h[eiData], ErrUnsupported)
	case le.Uint16(h[18:]) != elfMachineX86:
		return nil, fmt.Errorf("machine %d, want x86-64 (EM_X86_64, 62): %w", le.Uint16(h[18:]), ErrUnsupported)
	case le.Uint16(h[16:]) != elfTypeExec:
		return nil, fmt.Errorf("type %d, want an executable (ET_EXEC, 2): %w", le.Uint16(h[16:]), ErrUnsupported)
	}
	phoff := le.Uint64(h[32:])
	phentsize := le.Uint16(h[54:])
	phnum := uint64(le.Uint16(h[56:]))
	if phentsize != elfPhdrSize {
		return nil, fmt.Errorf("program header size %d, want %d: %w", phentsize, elfPhdrSize, ErrMalformed)
	}
	if phnum == 0 || phnum == pnXNum {
		return nil, fmt.Errorf("%d program headers: %w", phnum, ErrMalformed)
	}
	// phnum < 0xFFFF, so the table is < 4 MiB; img.read checks it is
	// inside the file before reading.
	tbl := make([]byte, phnum*elfPhdrSize)
	if err := img.read(tbl, phoff, "program headers"); err != nil {
		return nil, err
	}
	phdrs := make([]phdr, phnum)
	for i := range phdrs {
		b := tbl[i*elfPhdrSize:]
		phdrs[i] = phdr{
			typ:    le.Uint32(b[0:]),
			off:    le.Uint64(b[8:]),
			paddr:  le.Uint64(b[24:]),
			filesz: le.Uint64(b[32:]),
			memsz:  le.Uint64(b[40:]),
			palign: le.Uint64(b[48:]),
		}
	}
	return phdrs, nil
}

// findPVHEntry returns the 32-bit physical entry point from the Xen
// XEN_ELFNOTE_PHYS32_ENTRY note (elfnote.h) in the PT_NOTE segments.
func findPVHEntry(img image, phdrs []phdr) (uint64, error) {
	for i, p := range phdrs {
		if p.typ != ptNote || p.filesz == 0 {
			continue
		}
		if p.filesz > maxNoteSize {
			return 0, fmt.Errorf("note segment %d of %d bytes: %w", i, p.filesz, ErrMalformed)
		}
		notes := make([]byte, p.filesz)
		if err := img.read(notes, p.off, fmt.Sprintf("note segment %d", i)); err != nil {
			return 0, err
		}
		entry, found, err := scanNotes(notes, p.palign)
		if err != nil {
			return 0, fmt.Errorf("note segment %d: %w", i, err)
		}
		if found {
			return entry, nil
		}
	}
	return 0, ErrNoPVHNote
}

// scanNotes walks the notes in b (gABI "Note Section": namesz, descsz,
// type, then name and desc each padded to the alignment) for the PVH entry.
func scanNotes(b []byte, palign uint64) (uint64, bool, error) {
	align := uint64(4)
	if palign == 8 {
		align = 8
	}
	le := binary.LittleEndian
	pad := func(n uint64) uint64 { return (n + align - 1) &^ (align - 1) }
	size := uint64(len(b))
	for off := uint64(0); size-off >= 12; {
		namesz := uint64(le.Uint32(b[off:]))
		descsz := uint64(le.Uint32(b[off+4:]))
		typ := le.Uint32(b[off+8:])
		// All operands are below 2^33, so no overflow.
		nameOff := off + 12
		descOff := nameOff + pad(namesz)
		next := descOff + pad(descsz)
		if nameOff+namesz > size || descOff+descsz > size {
			return 0, false, fmt.Errorf("note at %#x runs past the segment: %w", off, ErrMalformed)
		}
		if typ == xenElfnotePhys32Entry && string(b[nameOff:nameOff+namesz]) == xenNoteName {
			desc := b[descOff : descOff+descsz]
			var entry uint64
			switch descsz {
			case 4:
				entry = uint64(le.Uint32(desc))
			case 8:
				entry = le.Uint64(desc)
			default:
				return 0, false, fmt.Errorf("PVH entry note of %d bytes: %w", descsz, ErrMalformed)
			}
			if entry >= 1<<32 {
				return 0, false, fmt.Errorf("PVH entry %#x is above 4 GiB: %w", entry, ErrMalformed)
			}
			return entry, true, nil
		}
		if next >= size {
			break
		}
		off = next
	}
	return 0, false, nil
}

// writeStartInfo writes struct hvm_start_info (version 1, start_info.h)
// with the command line, the initrd as the single module and the memory
// map.
func writeStartInfo(mem *guestmem.Memory, e *Entry) error {
	m, err := boundedMemoryMap(mem)
	if err != nil {
		return err
	}
	if MemmapAddr+len(m)*hvmMemmapEntrySize > ZeroPageAddr {
		return fmt.Errorf("%d memory map entries overflow the start info area: %w", len(m), ErrTooManyRegions)
	}
	le := binary.LittleEndian
	area := make([]byte, ZeroPageAddr-StartInfoAddr)
	si := area[:hvmStartInfoSize]
	le.PutUint32(si[0:], hvmStartMagic)
	le.PutUint32(si[4:], hvmStartVersion)
	// flags (8) stay 0.
	if e.InitrdSize > 0 {
		le.PutUint32(si[12:], 1) // nr_modules
		le.PutUint64(si[16:], ModlistAddr)
		mod := area[ModlistAddr-StartInfoAddr:]
		le.PutUint64(mod[0:], e.InitrdAddr)
		le.PutUint64(mod[8:], e.InitrdSize)
		// The module's cmdline_paddr (16) and reserved (24) stay 0.
	}
	le.PutUint64(si[24:], CmdlineAddr)
	// rsdp_paddr (32) stays 0: no ACPI, the MP table describes the CPUs.
	le.PutUint64(si[40:], MemmapAddr)
	le.PutUint32(si[48:], uint32(len(m)))
	for i, ent := range m {
		putHVMMemmap(area[MemmapAddr-StartInfoAddr+i*hvmMemmapEntrySize:], ent)
	}
	_, err = mem.WriteAt(area, StartInfoAddr)
	return err
}
