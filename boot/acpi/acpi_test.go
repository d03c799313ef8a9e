package acpi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/vesselvm/vessel/guestmem"
)

func newMem(t *testing.T) *guestmem.Memory {
	t.Helper()
	m, err := guestmem.New([]guestmem.RegionSpec{{GPA: 0, Size: 64 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func read(t *testing.T, m *guestmem.Memory, addr, n uint64) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := m.ReadAt(b, addr); err != nil {
		t.Fatal(err)
	}
	return b
}

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

// sdt reads a table at addr, checks its signature and checksum, and
// returns it whole.
func sdt(t *testing.T, m *guestmem.Memory, addr uint64, sig string) []byte {
	t.Helper()
	h := read(t, m, addr, 36)
	if string(h[0:4]) != sig {
		t.Fatalf("table at %#x: signature %q, want %q", addr, h[0:4], sig)
	}
	b := read(t, m, addr, uint64(binary.LittleEndian.Uint32(h[4:])))
	if sum(b) != 0 {
		t.Fatalf("%s checksum does not sum to zero", sig)
	}
	return b
}

func TestTables(t *testing.T) {
	for _, cpus := range []int{1, 3, 64, MaxCPUs} {
		m := newMem(t)
		if err := Write(m, cpus, nil, nil); err != nil {
			t.Fatalf("Write(%d): %v", cpus, err)
		}
		r := read(t, m, RSDPAddr, 36)
		if string(r[0:8]) != "RSD PTR " || sum(r[0:20]) != 0 || sum(r) != 0 || r[15] != 2 {
			t.Fatalf("bad RSDP % x", r)
		}
		xsdt := sdt(t, m, binary.LittleEndian.Uint64(r[24:]), "XSDT")
		if len(xsdt) != 36+16 {
			t.Fatalf("XSDT has %d bytes, want 2 entries", len(xsdt))
		}
		fadt := sdt(t, m, binary.LittleEndian.Uint64(xsdt[36:]), "FACP")
		if len(fadt) != fadtLen {
			t.Fatalf("FADT length %d", len(fadt))
		}
		if binary.LittleEndian.Uint32(fadt[fadtFlags:])&flagHWReduced == 0 {
			t.Error("FADT is not hardware-reduced")
		}
		for _, off := range []int{fadtSleepControl, fadtSleepStatus} {
			g := fadt[off : off+12]
			if g[0] != gasSystemIO || binary.LittleEndian.Uint64(g[4:]) != SleepControlPort {
				t.Errorf("sleep register GAS at %d = % x", off, g)
			}
		}
		dsdt := sdt(t, m, binary.LittleEndian.Uint64(fadt[fadtXDSDT:]), "DSDT")
		if !bytes.Contains(dsdt[36:], []byte("_S5_")) {
			t.Error("DSDT lacks _S5_")
		}
		madt := sdt(t, m, binary.LittleEndian.Uint64(xsdt[44:]), "APIC")
		var lapics, ioapics int
		for p := 44; p < len(madt); {
			typ, l := madt[p], int(madt[p+1])
			if l == 0 || p+l > len(madt) {
				t.Fatalf("bad MADT entry at %d", p)
			}
			switch typ {
			case 0:
				if madt[p+3] != byte(lapics) || madt[p+4]&1 == 0 {
					t.Errorf("local APIC %d: id %d flags %d", lapics, madt[p+3], madt[p+4])
				}
				lapics++
			case 1:
				ioapics++
				if madt[p+2] != byte(cpus) {
					t.Errorf("IOAPIC id %d, want %d", madt[p+2], cpus)
				}
			}
			p += l
		}
		if lapics != cpus || ioapics != 1 {
			t.Errorf("%d CPUs: MADT has %d local APICs and %d IOAPICs", cpus, lapics, ioapics)
		}
	}
}

func TestBadCPUCount(t *testing.T) {
	m := newMem(t)
	for _, n := range []int{0, -1, MaxCPUs + 1} {
		if err := Write(m, n, nil, nil); !errors.Is(err, ErrCPUs) {
			t.Errorf("Write(%d) = %v, want ErrCPUs", n, err)
		}
	}
}

func TestNoRAM(t *testing.T) {
	m, err := guestmem.New([]guestmem.RegionSpec{{GPA: 0, Size: 0x80000}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := Write(m, 1, nil, nil); !errors.Is(err, guestmem.ErrOutOfRange) {
		t.Errorf("Write with RAM below the tables = %v, want ErrOutOfRange", err)
	}
}

func TestPkgLength(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want []byte
	}{
		{0, []byte{1}}, {10, []byte{11}}, {62, []byte{63}}, {63, []byte{0x41, 0x04}}, {100, []byte{0x46, 0x06}},
	} {
		if got := pkgLength(tc.n); !bytes.Equal(got, tc.want) {
			t.Errorf("pkgLength(%d) = % x, want % x", tc.n, got, tc.want)
		}
	}
}

func TestDSDTShape(t *testing.T) {
	for _, n := range []int{0, 1, 10, MaxVirtioMMIO} {
		var devs []VirtioMMIO
		for i := 0; i < n; i++ {
			devs = append(devs, VirtioMMIO{Base: 0xD000_0000 + uint64(i)*0x1000, Size: 0x1000, GSI: uint32(5 + i)})
		}
		aml := dsdtAML(devs, nil)
		checkDSDT(t, aml)
		want := []string{"COM1"}
		for i := 0; i < n; i++ {
			want = append(want, fmt.Sprintf("V%03X", i))
		}
		if got := scopeDevices(t, aml); !slices.Equal(got, want) {
			t.Errorf("devices %v, want %v", got, want)
		}
		gen := dsdtAML(devs, &GenerationID{GSI: 3})
		checkDSDT(t, gen)
		if got := scopeDevices(t, gen); !slices.Equal(got, append(want, "GED0", "VGEN")) {
			t.Errorf("with a generation ID: devices %v, want %v then GED0, VGEN", got, want)
		}
		if got := bytes.Count(aml, []byte("LNRO0005")); got != n {
			t.Errorf("%d virtio devices, %d LNRO0005 entries", n, got)
		}
		if n > 1 && !bytes.Contains(aml, []byte{0x89, 0x06, 0x00, 0x03, 0x01, 6, 0, 0, 0}) {
			t.Error("no edge-triggered Interrupt descriptor for GSI 6")
		}
	}
}

// TestGenerationIDAML checks the generation ID devices' terms byte for
// byte where Linux reads them: GED0's interrupt and _EVT, VGEN's IDs and
// its ADDR package.
func TestGenerationIDAML(t *testing.T) {
	aml := generationIDDevices(GenerationID{GSI: 3})
	for _, want := range [][]byte{
		append([]byte{0x08, '_', 'H', 'I', 'D', 0x0D}, "ACPI0013\x00"...),
		{0x89, 0x06, 0x00, 0x03, 0x01, 3, 0, 0, 0, 0x79, 0x00},
		// MethodOp, PkgLength 19, _EVT, one argument, Notify (\_SB.VGEN, 0x80)
		{0x14, 19, '_', 'E', 'V', 'T', 0x01, 0x86, 0x5C, 0x2E, '_', 'S', 'B', '_', 'V', 'G', 'E', 'N', 0x0A, 0x80},
		append([]byte{0x08, '_', 'H', 'I', 'D', 0x0D}, "VMGENCTR\x00"...),
		append([]byte{0x08, '_', 'C', 'I', 'D', 0x0D}, "VM_GEN_COUNTER\x00"...),
		// Name (ADDR, Package (2) {0xFF000, 0})
		{0x08, 'A', 'D', 'D', 'R', 0x12, 12, 0x02, 0x0C, 0x00, 0xF0, 0x0F, 0x00, 0x0C, 0, 0, 0, 0},
	} {
		if !bytes.Contains(aml, want) {
			t.Errorf("no % x in % x", want, aml)
		}
	}
}

// TestGenerationIDFits writes the tables with the most devices and a
// generation ID: they must end before its bytes.
func TestGenerationIDFits(t *testing.T) {
	m := newMem(t)
	devs := make([]VirtioMMIO, MaxVirtioMMIO)
	for i := range devs {
		devs[i] = VirtioMMIO{Base: 0xD000_0000 + uint64(i)*0x1000, Size: 0x1000, GSI: uint32(5 + i)}
	}
	if err := Write(m, MaxCPUs, devs, &GenerationID{GSI: 3}); err != nil {
		t.Fatal(err)
	}
}

func TestWriteVirtioBad(t *testing.T) {
	m, err := guestmem.New([]guestmem.RegionSpec{{GPA: 0, Size: 2 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, devs := range [][]VirtioMMIO{
		make([]VirtioMMIO, MaxVirtioMMIO+1),
		{{Base: 0xFFFF_F000, Size: 0x2000, GSI: 5}},
		{{Base: 0xD000_0000, Size: 0, GSI: 5}},
	} {
		if err := Write(m, 1, devs, nil); !errors.Is(err, ErrDevices) {
			t.Errorf("Write(%v) = %v, want ErrDevices", devs, err)
		}
	}
}

// scopeDevices walks the terms of the DSDT's Scope (\_SB), each a
// Device, and returns their names; each Device's PkgLength must end
// where the next begins, and the last where the scope ends.
func scopeDevices(t *testing.T, aml []byte) []string {
	t.Helper()
	body, _ := pkg(t, aml[1:])
	if string(body[:4]) != "_SB_" {
		t.Fatalf("scope %q, want _SB_", body[:4])
	}
	var names []string
	for rest := body[4:]; len(rest) > 0; {
		if rest[0] != 0x5B || rest[1] != 0x82 {
			t.Fatalf("term % x is not a Device", rest[:2])
		}
		dev, next := pkg(t, rest[2:])
		names = append(names, string(dev[:4]))
		rest = next
	}
	return names
}

// pkg decodes a PkgLength at b and returns the package's body and what
// follows it.
func pkg(t *testing.T, b []byte) (body, rest []byte) {
	t.Helper()
	n, hdr := int(b[0]&0x3F), 1
	if b[0]&0xC0 == 0x40 {
		n, hdr = int(b[0]&0x0F)|int(b[1])<<4, 2
	} else if b[0]&0xC0 != 0 {
		t.Fatalf("PkgLength form %#x", b[0])
	}
	if n < hdr || n > len(b) {
		t.Fatalf("PkgLength %d of %d bytes", n, len(b))
	}
	return b[hdr:n], b[n:]
}

// checkDSDT checks the definition block's framing: Scope(\_SB) first,
// its PkgLength covering exactly the bytes up to Name(_S5_).
func checkDSDT(t *testing.T, aml []byte) {
	t.Helper()
	if aml[0] != 0x10 {
		t.Fatalf("DSDT does not start with ScopeOp: % x", aml[:4])
	}
	n := int(aml[1] & 0x3F)
	if aml[1]&0xC0 == 0x40 { // two-byte PkgLength
		n = int(aml[1]&0x0F) | int(aml[2])<<4
	}
	end := 1 + n
	if !bytes.Equal(aml[end:end+5], []byte{0x08, '_', 'S', '5', '_'}) {
		t.Fatalf("scope length %d does not end at _S5_: % x", aml[1], aml[end:])
	}
	if !bytes.Contains(aml, []byte{0x0C, 0x41, 0xD0, 0x05, 0x01}) {
		t.Error("COM1 lacks EisaId(PNP0501)")
	}
}
