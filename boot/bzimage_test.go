package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func TestLoadBzImageZeroPage(t *testing.T) {
	mem := newMem(t, 256*mib)
	p := defaultBz()
	img := p.build()
	initrd := initrdBytes(3*mib + 123)
	const cmdline = "console=ttyS0 reboot=k panic=1"
	e, err := load(mem, img, initrd, cmdline, 2)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}

	want := Entry{
		Protocol: BzImage64,
		RIP:      0x100200, RSP: BootStackPointer, RSI: ZeroPageAddr, RFLAGS: 2,
		CR0: 0x80000011, CR3: PML4Addr, CR4: 0x20, EFER: 0x500,
		GDTBase: GDTAddr, GDTLimit: 47,
		KernelEnd: 48 * mib,
	}
	got := *e
	got.CS, got.DS, got.TR, got.InitrdAddr, got.InitrdSize = Segment{}, Segment{}, Segment{}, 0, 0
	if got != want {
		t.Errorf("entry:\n got %+v\nwant %+v", got, want)
	}
	if e.Protocol.String() != "bzImage-64" {
		t.Errorf("Protocol.String() = %q", e.Protocol)
	}

	// The protected-mode kernel is at 1 MiB.
	pm := img[(4+1)*512:]
	if !bytes.Equal(readMem(t, mem, KernelLoadAddr, uint64(len(pm))), pm) {
		t.Error("protected-mode kernel not loaded at 1 MiB")
	}

	zp := readMem(t, mem, ZeroPageAddr, ZeroPageSize)
	le := binary.LittleEndian
	// The setup header is copied, then the loader fields are written.
	hdrEnd := 0x202 + int(img[0x201])
	wantHdr := bytes.Clone(img[0x1F1:hdrEnd])
	wantHdr[0x210-0x1F1] = 0xFF // type_of_loader
	le.PutUint32(wantHdr[0x214-0x1F1:], KernelLoadAddr)
	le.PutUint32(wantHdr[0x218-0x1F1:], uint32(e.InitrdAddr))
	le.PutUint32(wantHdr[0x21C-0x1F1:], uint32(len(initrd)))
	le.PutUint32(wantHdr[0x228-0x1F1:], CmdlineAddr)
	if !bytes.Equal(zp[0x1F1:hdrEnd], wantHdr) {
		t.Errorf("setup header in zero page:\n got % x\nwant % x", zp[0x1F1:hdrEnd], wantHdr)
	}
	for _, f := range []struct {
		name      string
		off, size int
		want      uint64
	}{
		{"type_of_loader", 0x210, 1, 0xFF},
		{"loadflags", 0x211, 1, loadedHigh},
		{"cmd_line_ptr", 0x228, 4, CmdlineAddr},
		{"ext_cmd_line_ptr", 0xC8, 4, 0},
		{"ramdisk_image", 0x218, 4, 256*mib - 3*mib - 4096},
		{"ramdisk_size", 0x21C, 4, uint64(len(initrd))},
		{"ext_ramdisk_image", 0xC0, 4, 0},
		{"ext_ramdisk_size", 0xC4, 4, 0},
		{"code32_start", 0x214, 4, KernelLoadAddr},
		{"e820_entries", 0x1E8, 1, 3},
		{"sentinel", 0x1EF, 1, 0},
		{"handover_offset", 0x264, 4, 0x1234},
		{"past the header", hdrEnd, 4, 0},
	} {
		var v uint64
		switch f.size {
		case 1:
			v = uint64(zp[f.off])
		case 4:
			v = uint64(le.Uint32(zp[f.off:]))
		}
		if v != f.want {
			t.Errorf("%s (%#x) = %#x, want %#x", f.name, f.off, v, f.want)
		}
	}
	wantMap := []E820Entry{
		{0, EBDAStart, E820RAM},
		{EBDAStart, HighMemStart - EBDAStart, E820Reserved},
		{HighMemStart, 256*mib - HighMemStart, E820RAM},
	}
	for i, w := range wantMap {
		b := zp[0x2D0+i*20:]
		g := E820Entry{le.Uint64(b), le.Uint64(b[8:]), E820Type(le.Uint32(b[16:]))}
		if g != w {
			t.Errorf("e820[%d] = %+v, want %+v", i, g, w)
		}
	}
	if s := cstring(t, mem, uint64(le.Uint32(zp[0x228:])), 4096); s != cmdline {
		t.Errorf("command line = %q, want %q", s, cmdline)
	}
	if e.InitrdAddr != 256*mib-3*mib-4096 || e.InitrdSize != uint64(len(initrd)) {
		t.Errorf("initrd at %#x+%#x", e.InitrdAddr, e.InitrdSize)
	}
	if !bytes.Equal(readMem(t, mem, e.InitrdAddr, e.InitrdSize), initrd) {
		t.Error("initrd content differs")
	}
}

func TestBzImageNoInitrd(t *testing.T) {
	mem := newMem(t, 64*mib)
	e, err := load(mem, defaultBz().build(), nil, "", 1)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	zp := readMem(t, mem, ZeroPageAddr, ZeroPageSize)
	le := binary.LittleEndian
	if le.Uint32(zp[0x218:]) != 0 || le.Uint32(zp[0x21C:]) != 0 || e.InitrdAddr != 0 {
		t.Errorf("ramdisk fields set without an initrd")
	}
	if s := cstring(t, mem, CmdlineAddr, 16); s != "" {
		t.Errorf("command line = %q", s)
	}
}

func TestInitrdPlacement(t *testing.T) {
	tests := []struct {
		name    string
		ram     uint64
		size    int
		addrMax uint32
		want    uint64
		wantErr error
	}{
		{"top of RAM", 256 * mib, 1 * mib, 0x7FFF_FFFF, 255 * mib, nil},
		{"unaligned size rounds down", 256 * mib, 5000, 0x7FFF_FFFF, 256*mib - 0x2000, nil},
		{"initrd_addr_max below RAM end", 256 * mib, 1 * mib, 96*mib - 1, 95 * mib, nil},
		{"initrd_addr_max unaligned", 256 * mib, 4096, 96*mib - 2, 96*mib - 2*4096, nil},
		{"zero initrd_addr_max means 0x37FFFFFF", 2 * gib, 1 * mib, 0, 0x3800_0000 - mib, nil},
		{"5 GiB RAM: below 2 GiB", 5 * gib, 2 * mib, 0x7FFF_FFFF, 2*gib - 2*mib, nil},
		{"3 GiB RAM, no initrd_addr_max limit", 3 * gib, 2 * mib, 0xFFFF_FFFF, 3*gib - 2*mib, nil},
		{"just fits above the kernel", 64 * mib, 16 * mib, 0x7FFF_FFFF, 48 * mib, nil},
		{"one page too many", 64 * mib, 16*mib + 1, 0x7FFF_FFFF, 0, ErrTooLarge},
		{"below initrd_addr_max does not fit", 256 * mib, 8 * mib, 50*mib - 1, 0, ErrTooLarge},
		{"larger than RAM", 64 * mib, 65 * mib, 0x7FFF_FFFF, 0, ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := newMem(t, tt.ram)
			p := defaultBz()
			p.initrdAddrMax = tt.addrMax
			initrd := initrdBytes(tt.size)
			e, err := load(mem, p.build(), initrd, "", 1)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Load = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if e.InitrdAddr != tt.want {
				t.Errorf("initrd at %#x, want %#x", e.InitrdAddr, tt.want)
			}
			if e.InitrdAddr%4096 != 0 || e.InitrdAddr < e.KernelEnd {
				t.Errorf("initrd at %#x: unaligned or below the kernel end %#x", e.InitrdAddr, e.KernelEnd)
			}
			if last := e.InitrdAddr + e.InitrdSize - 1; tt.addrMax != 0 && last > uint64(tt.addrMax) {
				t.Errorf("initrd ends at %#x, above initrd_addr_max %#x", last, tt.addrMax)
			}
			if !bytes.Equal(readMem(t, mem, e.InitrdAddr, e.InitrdSize), initrd) {
				t.Error("initrd content differs")
			}
		})
	}
}

func TestCmdline(t *testing.T) {
	tests := []struct {
		name    string
		size    uint32 // cmdline_size
		cmdline string
		wantErr error
	}{
		{"exactly cmdline_size", 2047, strings.Repeat("a", 2047), nil},
		{"one over cmdline_size", 2047, strings.Repeat("a", 2048), ErrCmdlineTooLong},
		{"small cmdline_size", 10, "console=ttyS0", ErrCmdlineTooLong},
		{"large cmdline_size, capped by the area", 1 << 20, strings.Repeat("a", CmdlineMaxSize), ErrCmdlineTooLong},
		{"large cmdline_size, fits the area", 1 << 20, strings.Repeat("a", CmdlineMaxSize-1), nil},
		{"embedded NUL", 2047, "a\x00b", errNUL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := newMem(t, 64*mib)
			p := defaultBz()
			p.cmdlineSize = tt.size
			_, err := load(mem, p.build(), nil, tt.cmdline, 1)
			switch {
			case tt.wantErr == errNUL:
				if err == nil || !strings.Contains(err.Error(), "NUL") {
					t.Fatalf("Load = %v, want a NUL error", err)
				}
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Load = %v, want %v", err, tt.wantErr)
				}
			case err != nil:
				t.Fatalf("Load: %v", err)
			default:
				if s := cstring(t, mem, CmdlineAddr, CmdlineMaxSize); s != tt.cmdline {
					t.Errorf("command line of %d bytes, want %d", len(s), len(tt.cmdline))
				}
			}
		})
	}
}

var errNUL = errors.New("NUL")

func TestBzImageMalformed(t *testing.T) {
	good := defaultBz().build()
	tests := []struct {
		name    string
		ram     uint64
		image   func() []byte
		wantErr error
	}{
		{"empty", 0, func() []byte { return nil }, ErrNotKernel},
		{"text", 0, func() []byte { return []byte("#!/bin/sh\necho not a kernel\n") }, ErrNotKernel},
		{"zeros", 0, func() []byte { return make([]byte, 8192) }, ErrNotKernel},
		{"truncated before HdrS", 0, func() []byte { return good[:0x204] }, ErrNotKernel},
		{"truncated before version", 0, func() []byte { return good[:0x207] }, ErrMalformed},
		{"truncated in the header", 0, func() []byte { return good[:0x250] }, ErrMalformed},
		{"truncated after the header", 0, func() []byte { return good[:0x300] }, ErrMalformed},
		{"no boot flag", 0, func() []byte { b := bytes.Clone(good); b[0x1FE] = 0; return b }, ErrNotKernel},
		{"huge setup_sects", 0, func() []byte { p := defaultBz(); p.payload = 0; b := p.build(); b[0x1F1] = 255; return b }, ErrMalformed},
		{"no code at the 64-bit entry", 0, func() []byte { p := defaultBz(); p.payload = 0x200; return p.build() }, ErrMalformed},
		{"setup only", 0, func() []byte { p := defaultBz(); p.payload = 0; return p.build() }, ErrMalformed},
		{"protocol 2.11", 0, func() []byte { p := defaultBz(); p.version = 0x020B; return p.build() }, ErrUnsupported},
		{"no 64-bit entry", 0, func() []byte { p := defaultBz(); p.xloadFlags = 0; return p.build() }, ErrUnsupported},
		{"zImage", 0, func() []byte { p := defaultBz(); p.loadFlags = 0; return p.build() }, ErrUnsupported},
		{"no jump", 0, func() []byte { b := bytes.Clone(good); b[0x200] = 0x90; return b }, ErrMalformed},
		{"header too short", 0, func() []byte { p := defaultBz(); p.hdrLen = 0x30; return p.build() }, ErrMalformed},
		{"header past boot_params", 0, func() []byte { p := defaultBz(); p.hdrLen = 0xFF; return p.build() }, ErrMalformed},
		{"alignment not a power of two", 0, func() []byte { p := defaultBz(); p.kernelAlign = 3 * mib; return p.build() }, ErrMalformed},
		{"pref_address overflows", 0, func() []byte { p := defaultBz(); p.prefAddress = ^uint64(0) - 100; return p.build() }, ErrMalformed},
		{"pref_address above RAM", 0, func() []byte { p := defaultBz(); p.prefAddress = 1 << 40; return p.build() }, ErrTooLarge},
		{"runs below 1 MiB", 0, func() []byte { p := defaultBz(); p.relocatable = 0; p.prefAddress = 0x10000; return p.build() }, ErrUnsupported},
		{"init_size too large", 0, func() []byte { p := defaultBz(); p.initSize = 0xFFFF_FFFF; return p.build() }, ErrTooLarge},
		{"kernel larger than low RAM", 16 * mib, func() []byte {
			p := defaultBz()
			p.initSize = 0
			p.prefAddress = 0
			p.payload = 15*mib + 1
			return p.build()
		}, ErrTooLarge},
		{"kernel larger than RAM", 4 * mib, func() []byte { p := defaultBz(); p.payload = 5 * mib; return p.build() }, ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ram := tt.ram
			if ram == 0 {
				ram = 64 * mib
			}
			mem := newMem(t, ram)
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

// shortReader claims a size it cannot deliver.
type shortReader struct{ b []byte }

func (r shortReader) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(r.b).ReadAt(p, off)
}

func TestLoadReaderShorterThanSize(t *testing.T) {
	mem := newMem(t, 64*mib)
	img := defaultBz().build()
	if _, err := Load(mem, shortReader{img}, int64(len(img))+4096, nil, 0, "", 1); err == nil {
		t.Error("Load succeeded with a kernel shorter than kernelSize")
	}
	if _, err := Load(mem, shortReader{img}, int64(len(img)), shortReader{[]byte("abc")}, 4096, "", 1); err == nil {
		t.Error("Load succeeded with an initrd shorter than initrdSize")
	}
	if _, err := Load(mem, shortReader{img}, -1, nil, 0, "", 1); err == nil {
		t.Error("Load succeeded with a negative size")
	}
}
