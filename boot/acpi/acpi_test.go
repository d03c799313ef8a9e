package acpi

import (
	"bytes"
	"encoding/binary"
	"errors"
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
		if err := Write(m, cpus, nil); err != nil {
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
		if err := Write(m, n, nil); !errors.Is(err, ErrCPUs) {
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
	if err := Write(m, 1, nil); !errors.Is(err, guestmem.ErrOutOfRange) {
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
		aml := dsdtAML(devs)
		checkDSDT(t, aml)
		if got := bytes.Count(aml, []byte("LNRO0005")); got != n {
			t.Errorf("%d virtio devices, %d LNRO0005 entries", n, got)
		}
		if n > 1 && !bytes.Contains(aml, []byte{0x89, 0x06, 0x00, 0x03, 0x01, 6, 0, 0, 0}) {
			t.Error("no edge-triggered Interrupt descriptor for GSI 6")
		}
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
		if err := Write(m, 1, devs); !errors.Is(err, ErrDevices) {
			t.Errorf("Write(%v) = %v, want ErrDevices", devs, err)
		}
	}
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
