package boot

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"

	"github.com/vesselvm/vessel/guestmem"
)

const (
	mib = 1 << 20
	gib = 1 << 30
)

// newMem allocates guest RAM of size bytes laid out by RAMLayout.
func newMem(t testing.TB, size uint64) *guestmem.Memory {
	t.Helper()
	mem, err := guestmem.New(RAMLayout(size))
	if err != nil {
		t.Fatalf("guestmem.New(%d): %v", size, err)
	}
	t.Cleanup(func() { mem.Close() })
	return mem
}

// bzParams describes a synthetic bzImage.
type bzParams struct {
	setupSects    uint8
	version       uint16
	hdrLen        uint8 // byte at 0x201: the header ends at 0x202+hdrLen
	loadFlags     uint8
	xloadFlags    uint16
	initrdAddrMax uint32
	kernelAlign   uint32
	relocatable   uint8
	cmdlineSize   uint32
	prefAddress   uint64
	initSize      uint32
	payload       int // protected-mode kernel bytes
}

// defaultBz is a plausible 2.15 bzImage: runtime at 16 MiB, init_size
// 32 MiB, so the kernel footprint ends at 48 MiB.
func defaultBz() bzParams {
	return bzParams{
		setupSects:    4,
		version:       0x020F,
		hdrLen:        0x6A,
		loadFlags:     loadedHigh,
		xloadFlags:    xlfKernel64 | 1<<1,
		initrdAddrMax: 0x7FFF_FFFF,
		kernelAlign:   2 * mib,
		relocatable:   1,
		cmdlineSize:   2047,
		prefAddress:   16 * mib,
		initSize:      32 * mib,
		payload:       64 << 10,
	}
}

// payloadByte is the content of the synthetic kernels at offset i.
func payloadByte(i int) byte { return byte(i*7 + i>>8 + 1) }

// build returns the image bytes.
func (p bzParams) build() []byte {
	sects := int(p.setupSects)
	if sects == 0 {
		sects = 4
	}
	img := make([]byte, (sects+1)*512+p.payload)
	le := binary.LittleEndian
	img[hdrSetupSects] = p.setupSects
	le.PutUint16(img[hdrBootFlag:], bootFlagMagic)
	img[hdrJump], img[hdrJump+1] = jumpOpcode, p.hdrLen
	le.PutUint32(img[hdrHeader:], headerMagic)
	le.PutUint16(img[hdrVersion:], p.version)
	img[hdrLoadFlags] = p.loadFlags
	le.PutUint32(img[hdrInitrdAddrMax:], p.initrdAddrMax)
	le.PutUint32(img[hdrKernelAlignment:], p.kernelAlign)
	img[hdrRelocatable] = p.relocatable
	img[hdrRelocatable+1] = 21 // min_alignment
	le.PutUint16(img[hdrXLoadFlags:], p.xloadFlags)
	le.PutUint32(img[hdrCmdlineSize:], p.cmdlineSize)
	le.PutUint64(img[hdrPrefAddress:], p.prefAddress)
	le.PutUint32(img[hdrInitSize:], p.initSize)
	le.PutUint32(img[0x264:], 0x1234) // handover_offset, copied verbatim
	for i := range p.payload {
		img[(sects+1)*512+i] = payloadByte(i)
	}
	return img
}

// elfSeg is a PT_LOAD segment of a synthetic ELF.
type elfSeg struct {
	paddr  uint64
	filesz uint64
	memsz  uint64
	off    uint64 // 0: placed automatically
}

// elfNote is one note of the synthetic PT_NOTE segment.
type elfNote struct {
	name string // without the NUL, which is added
	typ  uint32
	desc []byte
}

// elfParams describes a synthetic ELF64 vmlinux.
type elfParams struct {
	class   byte
	machine uint16
	loads   []elfSeg
	notes   []elfNote
}

func pvhNote(entry uint64, size int) elfNote {
	d := make([]byte, 8)
	binary.LittleEndian.PutUint64(d, entry)
	return elfNote{name: "Xen", typ: xenElfnotePhys32Entry, desc: d[:size]}
}

// defaultELF is a vmlinux with one 8 KiB segment (plus 4 KiB of bss) at
// 16 MiB, a GNU note and the PVH note pointing 0x10 into the segment.
func defaultELF() elfParams {
	return elfParams{
		class:   2,
		machine: 62,
		loads:   []elfSeg{{paddr: 16 * mib, filesz: 0x2000, memsz: 0x3000}},
		notes: []elfNote{
			{name: "GNU", typ: 3, desc: []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}},
			{name: "Linux", typ: 6, desc: []byte("6.1")},
			pvhNote(16*mib+0x10, 8),
		},
	}
}

func pad4(b *bytes.Buffer) {
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
}

// build returns the ELF bytes: header, program headers (loads then one
// note), the notes, then each segment's data at a 4 KiB-aligned offset.
func (p elfParams) build() []byte {
	le := binary.LittleEndian
	var notes bytes.Buffer
	for _, n := range p.notes {
		var h [12]byte
		le.PutUint32(h[0:], uint32(len(n.name)+1))
		le.PutUint32(h[4:], uint32(len(n.desc)))
		le.PutUint32(h[8:], n.typ)
		notes.Write(h[:])
		notes.WriteString(n.name)
		notes.WriteByte(0)
		pad4(&notes)
		notes.Write(n.desc)
		pad4(&notes)
	}
	nph := len(p.loads)
	if len(p.notes) > 0 {
		nph++
	}
	noteOff := elfHeaderSize + nph*elfPhdrSize
	dataOff := uint64(noteOff+notes.Len()+0xFFF) &^ 0xFFF

	h := make([]byte, elfHeaderSize)
	copy(h, elfMagic)
	h[4], h[5], h[6] = p.class, 1, 1
	le.PutUint16(h[16:], 2) // ET_EXEC
	le.PutUint16(h[18:], p.machine)
	le.PutUint32(h[20:], 1)
	le.PutUint64(h[24:], 0xffffffff81000000)
	le.PutUint64(h[32:], elfHeaderSize)
	le.PutUint16(h[52:], elfHeaderSize)
	le.PutUint16(h[54:], elfPhdrSize)
	le.PutUint16(h[56:], uint16(nph))

	out := bytes.NewBuffer(h)
	var data []byte
	for _, s := range p.loads {
		off := s.off
		if off == 0 {
			off = dataOff + uint64(len(data))
			seg := make([]byte, s.filesz)
			for i := range seg {
				seg[i] = payloadByte(i)
			}
			data = append(data, seg...)
			data = append(data, make([]byte, (0x1000-len(data)%0x1000)%0x1000)...)
		}
		ph := make([]byte, elfPhdrSize)
		le.PutUint32(ph[0:], 1) // PT_LOAD
		le.PutUint32(ph[4:], 5)
		le.PutUint64(ph[8:], off)
		le.PutUint64(ph[16:], 0xffffffff00000000|s.paddr)
		le.PutUint64(ph[24:], s.paddr)
		le.PutUint64(ph[32:], s.filesz)
		le.PutUint64(ph[40:], s.memsz)
		le.PutUint64(ph[48:], 0x200000)
		out.Write(ph)
	}
	if len(p.notes) > 0 {
		ph := make([]byte, elfPhdrSize)
		le.PutUint32(ph[0:], 4) // PT_NOTE
		le.PutUint32(ph[4:], 4)
		le.PutUint64(ph[8:], uint64(noteOff))
		le.PutUint64(ph[32:], uint64(notes.Len()))
		le.PutUint64(ph[40:], uint64(notes.Len()))
		le.PutUint64(ph[48:], 4)
		out.Write(ph)
	}
	out.Write(notes.Bytes())
	out.Write(make([]byte, int(dataOff)-out.Len()))
	out.Write(data)
	return out.Bytes()
}

// load runs Load on an in-memory kernel and initrd.
func load(mem *guestmem.Memory, kernel, initrd []byte, cmdline string, cpus int) (*Entry, error) {
	var r io.ReaderAt
	if initrd != nil {
		r = bytes.NewReader(initrd)
	}
	return Load(mem, bytes.NewReader(kernel), int64(len(kernel)), r, int64(len(initrd)), cmdline, cpus)
}

// readMem reads n bytes of guest RAM or fails the test.
func readMem(t testing.TB, mem *guestmem.Memory, gpa, n uint64) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := mem.ReadAt(b, gpa); err != nil {
		t.Fatalf("read guest %#x+%#x: %v", gpa, n, err)
	}
	return b
}

// cstring reads a NUL-terminated string at gpa (at most max bytes).
func cstring(t testing.TB, mem *guestmem.Memory, gpa uint64, max int) string {
	t.Helper()
	b := readMem(t, mem, gpa, uint64(max))
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		t.Fatalf("no NUL within %d bytes at %#x", max, gpa)
	}
	return string(b[:i])
}

// initrdBytes is a recognisable initrd of n bytes.
func initrdBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13 + 5)
	}
	return b
}
