package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestLoadPVH(t *testing.T) {
	for _, tt := range []struct {
		name     string
		noteSize int
		initrd   []byte
	}{
		{"8-byte note, initrd", 8, initrdBytes(2*mib + 77)},
		{"4-byte note, no initrd", 4, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mem := newMem(t, 128*mib)
			// Garbage where the bss goes: Load must zero it.
			if err := mem.PutUint64(16*mib+0x2800, 0xDEADBEEF); err != nil {
				t.Fatal(err)
			}
			p := defaultELF()
			p.notes[2] = pvhNote(16*mib+0x10, tt.noteSize)
			const cmdline = "console=hvc0 root=/dev/vda"
			e, err := load(mem, p.build(), tt.initrd, cmdline, 4)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := Entry{
				Protocol: PVH,
				RIP:      16*mib + 0x10, RSP: BootStackPointer, RBX: StartInfoAddr, RFLAGS: 2,
				CR0:     0x11,
				GDTBase: GDTAddr, GDTLimit: 47,
				KernelEnd: 16*mib + 0x3000,
			}
			got := *e
			got.CS, got.DS, got.TR, got.InitrdAddr, got.InitrdSize = Segment{}, Segment{}, Segment{}, 0, 0
			if got != want {
				t.Errorf("entry:\n got %+v\nwant %+v", got, want)
			}
			if e.Protocol.String() != "PVH" {
				t.Errorf("Protocol.String() = %q", e.Protocol)
			}
			seg := readMem(t, mem, 16*mib, 0x3000)
			for i, b := range seg {
				w := byte(0)
				if i < 0x2000 {
					w = payloadByte(i)
				}
				if b != w {
					t.Fatalf("segment byte %#x = %#x, want %#x", i, b, w)
				}
			}

			le := binary.LittleEndian
			si := readMem(t, mem, StartInfoAddr, hvmStartInfoSize)
			if m := le.Uint32(si[0:]); m != 0x336ec578 {
				t.Errorf("magic %#x", m)
			}
			if v := le.Uint32(si[4:]); v != 1 {
				t.Errorf("version %d", v)
			}
			if s := cstring(t, mem, le.Uint64(si[24:]), 4096); s != cmdline {
				t.Errorf("cmdline %q", s)
			}
			if rsdp := le.Uint64(si[32:]); rsdp != 0 {
				t.Errorf("rsdp_paddr %#x", rsdp)
			}
			nmods, modlist := le.Uint32(si[12:]), le.Uint64(si[16:])
			if tt.initrd == nil {
				if nmods != 0 || modlist != 0 || e.InitrdSize != 0 {
					t.Errorf("nr_modules %d, modlist_paddr %#x without an initrd", nmods, modlist)
				}
			} else {
				if nmods != 1 || modlist == 0 {
					t.Fatalf("nr_modules %d, modlist_paddr %#x", nmods, modlist)
				}
				mod := readMem(t, mem, modlist, hvmModlistEntrySize)
				addr, size := le.Uint64(mod[0:]), le.Uint64(mod[8:])
				if addr != e.InitrdAddr || size != uint64(len(tt.initrd)) || le.Uint64(mod[16:]) != 0 {
					t.Errorf("module %#x+%#x, entry says %#x+%#x", addr, size, e.InitrdAddr, e.InitrdSize)
				}
				if wantAddr := (128*mib - size) &^ 0xFFF; addr != wantAddr {
					t.Errorf("initrd at %#x, want %#x", addr, wantAddr)
				}
				if !bytes.Equal(readMem(t, mem, addr, size), tt.initrd) {
					t.Error("initrd content differs")
				}
			}
			memmap, n := le.Uint64(si[40:]), le.Uint32(si[48:])
			wantMap := MemoryMap(mem)
			if n != uint32(len(wantMap)) || n != 3 {
				t.Fatalf("memmap_entries %d, want %d", n, len(wantMap))
			}
			mm := readMem(t, mem, memmap, uint64(n)*24)
			for i, w := range wantMap {
				b := mm[i*24:]
				g := E820Entry{le.Uint64(b), le.Uint64(b[8:]), E820Type(le.Uint32(b[16:]))}
				if g != w || le.Uint32(b[20:]) != 0 {
					t.Errorf("memmap[%d] = %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

func TestPVHCmdlineTooLong(t *testing.T) {
	mem := newMem(t, 64*mib)
	img := defaultELF().build()
	if _, err := load(mem, img, nil, strings.Repeat("x", 2047), 1); err != nil {
		t.Fatalf("2047 bytes: %v", err)
	}
	if _, err := load(mem, img, nil, strings.Repeat("x", 2048), 1); !errors.Is(err, ErrCmdlineTooLong) {
		t.Fatalf("2048 bytes: %v, want ErrCmdlineTooLong", err)
	}
}

func TestPVHErrors(t *testing.T) {
	build := func(f func(p *elfParams)) func() []byte {
		return func() []byte { p := defaultELF(); f(&p); return p.build() }
	}
	patch := func(off int, v uint64, size int) func() []byte {
		return func() []byte {
			b := defaultELF().build()
			switch size {
			case 2:
				binary.LittleEndian.PutUint16(b[off:], uint16(v))
			case 8:
				binary.LittleEndian.PutUint64(b[off:], v)
			}
			return b
		}
	}
	// Offsets in the default image: program header 0 (PT_LOAD) at 64,
	// program header 1 (PT_NOTE) at 120.
	const ph0, ph1 = 64, 120
	tests := []struct {
		name    string
		image   func() []byte
		wantErr error
	}{
		{"no notes", build(func(p *elfParams) { p.notes = nil }), ErrNoPVHNote},
		{"notes without PVH", build(func(p *elfParams) { p.notes = p.notes[:2] }), ErrNoPVHNote},
		{"PVH type, other name", build(func(p *elfParams) { p.notes[2].name = "Xe" }), ErrNoPVHNote},
		{"truncated ELF header", func() []byte { return defaultELF().build()[:40] }, ErrMalformed},
		{"magic only", func() []byte { return []byte(elfMagic) }, ErrMalformed},
		{"ELF32", build(func(p *elfParams) { p.class = 1 }), ErrUnsupported},
		{"not x86-64", build(func(p *elfParams) { p.machine = 183 }), ErrUnsupported},
		{"big-endian", patch(4, 0x0202, 2), ErrUnsupported},
		{"not executable", patch(16, 3, 2), ErrUnsupported},
		{"phentsize", patch(54, 32, 2), ErrMalformed},
		{"no program headers", patch(56, 0, 2), ErrMalformed},
		{"PN_XNUM", patch(56, 0xFFFF, 2), ErrMalformed},
		{"too many program headers", patch(56, 1000, 2), ErrMalformed},
		{"phoff past EOF", patch(32, 1<<40, 8), ErrMalformed},
		{"phoff overflows", patch(32, ^uint64(0)-8, 8), ErrMalformed},
		{"note offset past EOF", patch(ph1+8, 1<<32, 8), ErrMalformed},
		{"note size huge", patch(ph1+32, 1<<40, 8), ErrMalformed},
		{"note runs past segment", build(func(p *elfParams) { p.notes[2].desc = p.notes[2].desc[:6] }), ErrMalformed},
		{"PVH note of 2 bytes", build(func(p *elfParams) { p.notes[2].desc = p.notes[2].desc[:2] }), ErrMalformed},
		{"PVH entry above 4 GiB", build(func(p *elfParams) { p.notes[2] = pvhNote(1<<32, 8) }), ErrMalformed},
		{"entry outside segments", build(func(p *elfParams) { p.notes[2] = pvhNote(8*mib, 8) }), ErrMalformed},
		{"segment outside RAM", build(func(p *elfParams) { p.loads[0].paddr = 128 * mib; p.notes[2] = pvhNote(128*mib, 8) }), ErrTooLarge},
		{"segment in the MMIO hole", build(func(p *elfParams) { p.loads[0].paddr = MMIOHoleStart; p.notes[2] = pvhNote(MMIOHoleStart, 8) }), ErrTooLarge},
		{"segment above 4 GiB", build(func(p *elfParams) { p.loads[0].paddr = 1 << 32; p.notes[2] = pvhNote(0, 8) }), ErrMalformed},
		{"segment below 1 MiB", build(func(p *elfParams) { p.loads[0].paddr = 0x7000; p.notes[2] = pvhNote(0x7000, 8) }), ErrMalformed},
		{"segment address overflows", patch(ph0+24, ^uint64(0)-0x1000, 8), ErrMalformed},
		{"p_filesz > p_memsz", patch(ph0+32, 0x4000, 8), ErrMalformed},
		{"segment offset past EOF", patch(ph0+8, 1<<20, 8), ErrMalformed},
		{"segment offset overflows", patch(ph0+8, ^uint64(0)-10, 8), ErrMalformed},
		{"p_memsz huge", patch(ph0+40, 1<<62, 8), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := newMem(t, 64*mib)
			e, err := load(mem, tt.image(), nil, "", 1)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Load = %v, %v; want %v", e, err, tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "boot: ") {
				t.Errorf("error %q lacks the boot: prefix", err)
			}
		})
	}
}

// paddedReader reads b followed by zeros up to size.
type paddedReader struct {
	b    []byte
	size int64
}

func (r paddedReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && off+int64(n) < r.size {
		if i := off + int64(n); i < int64(len(r.b)) {
			p[n] = r.b[i]
		} else {
			p[n] = 0
		}
		n++
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func TestPVHFileLargerThanRAM(t *testing.T) {
	// A vmlinux with debug info can be far larger than the guest: only the
	// PT_LOAD segments have to fit.
	mem := newMem(t, 64*mib)
	img := defaultELF().build()
	e, err := Load(mem, paddedReader{img, 1 << 30}, 1<<30, nil, 0, "", 1)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if e.Protocol != PVH {
		t.Errorf("protocol %v", e.Protocol)
	}
}
