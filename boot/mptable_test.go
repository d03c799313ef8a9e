package boot

import (
	"encoding/binary"
	"errors"
	"testing"
)

func sum(b []byte) uint8 {
	var s uint8
	for _, c := range b {
		s += c
	}
	return s
}

func TestMPTable(t *testing.T) {
	for _, cpus := range []int{1, 3, 64, MaxCPUs} {
		t.Run("", func(t *testing.T) {
			mem := newMem(t, 64*mib)
			if err := WriteMPTable(mem, cpus); err != nil {
				t.Fatalf("WriteMPTable(%d): %v", cpus, err)
			}
			le := binary.LittleEndian
			mpf := readMem(t, mem, MPTableAddr, 16)
			if string(mpf[:4]) != "_MP_" || mpf[8] != 1 || mpf[9] != 4 || mpf[11] != 0 {
				t.Errorf("floating pointer % x", mpf)
			}
			if s := sum(mpf); s != 0 {
				t.Errorf("floating pointer checksum off by %d", s)
			}
			addr := uint64(le.Uint32(mpf[4:]))
			hdr := readMem(t, mem, addr, 44)
			if string(hdr[:4]) != "PCMP" || hdr[6] != 4 || le.Uint32(hdr[36:]) != 0xFEE00000 {
				t.Errorf("config table header % x", hdr)
			}
			if string(hdr[8:16]) != "VESSEL  " || string(hdr[16:28]) != "MICROVM     " {
				t.Errorf("OEM ids %q %q", hdr[8:16], hdr[16:28])
			}
			length := uint64(le.Uint16(hdr[4:]))
			tbl := readMem(t, mem, addr, length)
			if s := sum(tbl); s != 0 {
				t.Errorf("config table checksum off by %d", s)
			}
			if end := addr + length; end > HighMemStart || addr < EBDAStart {
				t.Errorf("table [%#x, %#x) outside the reserved BIOS area", addr, end)
			}
			count := int(le.Uint16(hdr[34:]))
			if want := cpus + 1 + 1 + 24 + 2; count != want {
				t.Errorf("%d entries, want %d", count, want)
			}

			n := map[byte]int{}
			off := uint64(44)
			for i := 0; i < count; i++ {
				if off >= length {
					t.Fatalf("entry %d at %d past the table length %d", i, off, length)
				}
				e := tbl[off:]
				switch e[0] {
				case mpProcessor:
					id := int(e[1])
					flags := byte(cpuEnabled)
					if id == 0 {
						flags |= cpuBootProcessor
					}
					if id != n[0] || e[2] != 0x14 || e[3] != flags || le.Uint32(e[8:])&0x201 != 0x201 || le.Uint32(e[4:]) == 0 {
						t.Errorf("processor entry % x", e[:20])
					}
					off += 20
				case mpBus:
					if e[1] != 0 || string(e[2:8]) != "ISA   " {
						t.Errorf("bus entry % x", e[:8])
					}
					off += 8
				case mpIOAPIC:
					if int(e[1]) != cpus || e[2] != 0x11 || e[3] != 1 || le.Uint32(e[4:]) != 0xFEC00000 {
						t.Errorf("IOAPIC entry % x", e[:8])
					}
					off += 8
				case mpIntSrc:
					irq := byte(n[mpIntSrc])
					if e[1] != mpINT || e[4] != 0 || e[5] != irq || int(e[6]) != cpus || e[7] != irq {
						t.Errorf("interrupt entry % x", e[:8])
					}
					off += 8
				case mpLIntSrc:
					want := []byte{mpExtINT, 0}
					if n[mpLIntSrc] == 1 {
						want = []byte{mpNMI, 1}
					}
					if e[1] != want[0] || e[6] != 0xFF || e[7] != want[1] {
						t.Errorf("local interrupt entry % x", e[:8])
					}
					off += 8
				default:
					t.Fatalf("unknown entry type %d", e[0])
				}
				n[e[0]]++
			}
			if off != length {
				t.Errorf("entries end at %d, table length %d", off, length)
			}
			want := map[byte]int{mpProcessor: cpus, mpBus: 1, mpIOAPIC: 1, mpIntSrc: 24, mpLIntSrc: 2}
			for typ, w := range want {
				if n[typ] != w {
					t.Errorf("%d entries of type %d, want %d", n[typ], typ, w)
				}
			}
		})
	}
}

func TestMPTableCPUCount(t *testing.T) {
	mem := newMem(t, 64*mib)
	for _, cpus := range []int{0, -1, MaxCPUs + 1, 255, 1000} {
		if err := WriteMPTable(mem, cpus); !errors.Is(err, ErrCPUCount) {
			t.Errorf("WriteMPTable(%d) = %v, want ErrCPUCount", cpus, err)
		}
		if _, err := load(mem, defaultBz().build(), nil, "", cpus); !errors.Is(err, ErrCPUCount) {
			t.Errorf("Load(cpus=%d) = %v, want ErrCPUCount", cpus, err)
		}
	}
	if MaxCPUs < 64 || MaxCPUs >= 255 {
		t.Errorf("MaxCPUs = %d", MaxCPUs)
	}
}
