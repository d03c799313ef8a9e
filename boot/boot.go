package boot

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"strings"

	"github.com/vesselvm/vessel/guestmem"
)

// Sentinel errors. Load and the helpers wrap them with context; test with
// errors.Is.
var (
	// ErrNotKernel means the image is neither a bzImage nor an ELF file.
	ErrNotKernel = errors.New("not a Linux kernel image (bzImage or ELF vmlinux)")
	// ErrUnsupported means the image is a kernel of a kind vessel cannot
	// boot: a bzImage older than boot protocol 2.12 or without the 64-bit
	// entry point, or an ELF that is not x86-64.
	ErrUnsupported = errors.New("unsupported kernel image")
	// ErrNoPVHNote means an ELF kernel lacks the XEN_ELFNOTE_PHYS32_ENTRY
	// note; vessel does not implement the 64-bit ELF entry point.
	ErrNoPVHNote = errors.New("ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y")
	// ErrMalformed means the image claims to be a kernel but its headers
	// are inconsistent (offsets past the end of file, overflowing sizes...).
	ErrMalformed = errors.New("malformed kernel image")
	// ErrTooLarge means the kernel, initrd or boot data do not fit in
	// guest RAM where the boot protocol needs them.
	ErrTooLarge = errors.New("does not fit in guest memory")
	// ErrCmdlineTooLong means the command line exceeds what the kernel or
	// the command line area accepts.
	ErrCmdlineTooLong = errors.New("kernel command line too long")
	// ErrCPUCount means the vCPU count is zero, negative or above MaxCPUs.
	ErrCPUCount = errors.New("invalid vCPU count")
	// ErrTooManyRegions means guest RAM has more regions than the e820
	// table of the zero page (MaxE820Entries) can describe.
	ErrTooManyRegions = errors.New("too many memory map entries")
)

// Protocol is the boot protocol an Entry follows.
type Protocol int

const (
	// BzImage64 is the 64-bit boot protocol of boot.rst: long mode,
	// identity-mapped paging, RSI = zero page.
	BzImage64 Protocol = iota + 1
	// PVH is the Xen PVH entry: 32-bit protected mode, paging off,
	// EBX = hvm_start_info.
	PVH
)

// String returns the protocol name.
func (p Protocol) String() string {
	switch p {
	case BzImage64:
		return "bzImage-64"
	case PVH:
		return "PVH"
	}
	return fmt.Sprintf("Protocol(%d)", int(p))
}

// Segment is a segment register in descriptor-cache form, field for field
// KVM's struct kvm_segment. Limit is in bytes (already scaled by G); Type
// is the 4-bit descriptor type; the one-bit flags are 0 or 1.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
}

// Entry is the vCPU state (for the boot vCPU) that starts the loaded kernel.
// Registers not listed are zero. Interrupts must be disabled (RFLAGS.IF=0).
type Entry struct {
	Protocol Protocol
	// RIP is the entry point; RSP the boot stack; RSI the zero page
	// (BzImage64); RBX the hvm_start_info (PVH); RFLAGS is 0x2.
	RIP, RSP, RSI, RBX, RFLAGS uint64
	// CR0, CR3, CR4 and EFER set the processor mode.
	CR0, CR3, CR4, EFER uint64
	// CS is the code segment; DS is also used for ES, SS, FS and GS.
	CS, DS Segment
	// TR is the task register: a busy TSS of base 0, limit 0x67, whose
	// descriptor is in the GDT. VMX requires a usable TR.
	TR Segment
	// GDTBase and GDTLimit describe the GDT written at GDTAddr. The IDT
	// is left empty (base 0, limit 0): interrupts are off until the kernel
	// loads its own.
	GDTBase  uint64
	GDTLimit uint16
	// KernelEnd is the first guest-physical address past the memory the
	// kernel occupies at boot: the loaded image, or for a bzImage the
	// larger init_size footprint. The initrd is placed above it.
	KernelEnd uint64
	// InitrdAddr and InitrdSize locate the loaded initrd (0 if none).
	InitrdAddr, InitrdSize uint64
}

// Control register and EFER bits.
const (
	cr0PE    = 1 << 0
	cr0ET    = 1 << 4
	cr0PG    = 1 << 31
	cr4PAE   = 1 << 5
	eferLME  = 1 << 8
	eferLMA  = 1 << 10
	rflagsR1 = 1 << 1 // bit 1 of RFLAGS is reserved and always 1
)

const pageSize = 4096

// Load loads a kernel into guest RAM and prepares everything needed to
// start it on cpus vCPUs: the command line, the initrd (if initrd is
// non-nil and initrdSize > 0), the memory map, the MP table, the GDT and,
// for a bzImage, the identity-mapped page tables. It detects the format:
// a bzImage (boot protocol 2.12+ with a 64-bit entry point) boots through
// the 64-bit boot protocol; an x86-64 ELF vmlinux boots through PVH and
// must carry the PVH entry note (ErrNoPVHNote otherwise); anything else
// gives ErrNotKernel. kernelSize and initrdSize are the sizes of the
// readers' contents. The returned Entry is the boot vCPU's state; the
// other vCPUs wait for INIT/SIPI as usual.
func Load(mem *guestmem.Memory, kernel io.ReaderAt, kernelSize int64, initrd io.ReaderAt, initrdSize int64, cmdline string, cpus int) (*Entry, error) {
	if mem == nil || kernel == nil {
		return nil, errors.New("boot: nil guest memory or kernel")
	}
	if kernelSize < 0 || initrdSize < 0 {
		return nil, fmt.Errorf("boot: negative image size (kernel %d, initrd %d)", kernelSize, initrdSize)
	}
	if initrd == nil {
		initrdSize = 0
	}
	if cpus < 1 || cpus > MaxCPUs {
		return nil, fmt.Errorf("boot: %d vCPUs (1 to %d supported): %w", cpus, MaxCPUs, ErrCPUCount)
	}
	if uint64(initrdSize) > mem.Size() {
		return nil, fmt.Errorf("boot: initrd of %d bytes, guest RAM %d bytes: %w", initrdSize, mem.Size(), ErrTooLarge)
	}
	if i := strings.IndexByte(cmdline, 0); i >= 0 {
		return nil, fmt.Errorf("boot: kernel command line contains a NUL byte at offset %d", i)
	}

	img := image{r: kernel, size: uint64(kernelSize)}
	rd := ramdisk{r: initrd, size: uint64(initrdSize)}
	var magic [4]byte
	if kernelSize >= int64(len(magic)) {
		if err := readFull(kernel, magic[:], 0); err != nil {
			return nil, fmt.Errorf("boot: read kernel: %w", err)
		}
	}
	var (
		e   *Entry
		err error
	)
	if string(magic[:]) == elfMagic {
		e, err = loadPVH(mem, img, rd, cmdline)
	} else {
		e, err = loadBzImage(mem, img, rd, cmdline)
	}
	if err != nil {
		return nil, err
	}
	if err := WriteMPTable(mem, cpus); err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	if err := writeGDT(mem, e.Protocol); err != nil {
		return nil, fmt.Errorf("boot: GDT: %w", err)
	}
	e.CS, e.DS, e.TR = codeSegment(e.Protocol), dataSegment(), tssSegment()
	e.GDTBase, e.GDTLimit = GDTAddr, gdtLimit
	e.RSP = BootStackPointer
	e.RFLAGS = rflagsR1
	return e, nil
}

// ramdisk is the optional initrd.
type ramdisk struct {
	r    io.ReaderAt
	size uint64
}

// image is an untrusted kernel file.
type image struct {
	r    io.ReaderAt
	size uint64
}

// read fills p from offset off, failing with ErrMalformed if the range is
// outside the file.
func (im image) read(p []byte, off uint64, what string) error {
	end, carry := bits.Add64(off, uint64(len(p)), 0)
	if carry != 0 || end > im.size {
		return fmt.Errorf("%s at offset %#x+%#x is past the end of the %d-byte file: %w", what, off, len(p), im.size, ErrMalformed)
	}
	if err := readFull(im.r, p, int64(off)); err != nil {
		return fmt.Errorf("read %s: %w", what, err)
	}
	return nil
}

// readFull reads exactly len(p) bytes at off; a full read that also returns
// io.EOF is a success.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// writeCmdline writes cmdline NUL-terminated at CmdlineAddr after checking
// it against limit characters (terminator excluded).
func writeCmdline(mem *guestmem.Memory, cmdline string, limit uint64) error {
	limit = min(limit, CmdlineMaxSize-1)
	if uint64(len(cmdline)) > limit {
		return fmt.Errorf("%d bytes, at most %d allowed: %w", len(cmdline), limit, ErrCmdlineTooLong)
	}
	buf := make([]byte, len(cmdline)+1)
	copy(buf, cmdline)
	if _, err := mem.WriteAt(buf, CmdlineAddr); err != nil {
		return fmt.Errorf("write command line: %w", err)
	}
	return nil
}

// regionAt returns the RAM region containing gpa.
func regionAt(mem *guestmem.Memory, gpa uint64) (guestmem.Region, bool) {
	for _, r := range mem.Regions() {
		if gpa >= r.GPA && gpa-r.GPA < r.Size {
			return r, true
		}
	}
	return guestmem.Region{}, false
}

// loadInitrd places the initrd page-aligned at the highest address where
// [addr, addr+size) lies inside the RAM region holding floor, at or above
// floor and below limit, then reads it there.
func loadInitrd(mem *guestmem.Memory, rd ramdisk, floor, limit uint64) (uint64, error) {
	size := rd.size
	r, ok := regionAt(mem, floor)
	if !ok {
		return 0, fmt.Errorf("initrd: no RAM at %#x: %w", floor, ErrTooLarge)
	}
	top := min(limit, r.End())
	if size > top {
		return 0, fmt.Errorf("initrd of %d bytes below %#x: %w", size, top, ErrTooLarge)
	}
	addr := (top - size) &^ (pageSize - 1)
	if addr < floor {
		return 0, fmt.Errorf("initrd of %d bytes between %#x and %#x: %w", size, floor, top, ErrTooLarge)
	}
	dst, err := mem.Slice(addr, size)
	if err != nil {
		return 0, fmt.Errorf("initrd at %#x: %w", addr, err)
	}
	if err := readFull(rd.r, dst, 0); err != nil {
		return 0, fmt.Errorf("read initrd: %w", err)
	}
	return addr, nil
}

// alignUp rounds v up to a multiple of the power of two a, reporting
// overflow.
func alignUp(v, a uint64) (uint64, bool) {
	s, carry := bits.Add64(v, a-1, 0)
	return s &^ (a - 1), carry == 0
}
