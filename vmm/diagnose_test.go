package vmm

import (
	"encoding/binary"
	"regexp"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/guestmem"
	"github.com/vesselvm/vessel/kvm"
)

func TestDescribeLAPIC(t *testing.T) {
	regs := make([]byte, 1024)
	put := func(off int, v uint32) { binary.LittleEndian.PutUint32(regs[off:], v) }
	put(lapicIRR+0x10, 1<<(0x25-32))  // vector 0x25 requested
	put(lapicIRR+0x70, 1<<(0xec-224)) // and 0xec (the timer)
	put(lapicISR+0x10, 1<<(0x30-32))
	put(lapicTPR, 0x10)
	put(lapicLVTT, 2<<17|0xec)
	tests := []struct {
		name string
		lvtt uint32
		want string
	}{
		{"deadline", 2<<17 | 0xec, "lapic irr [0x25 0xec] isr [0x30] tpr 0x10 timer tsc-deadline vector 0xec"},
		{"one-shot masked", 1<<16 | 0xef, "lapic irr [0x25 0xec] isr [0x30] tpr 0x10 timer one-shot vector 0xef masked initial 100 current 40"},
	}
	put(lapicTMICT, 100)
	put(lapicTMCCT, 40)
	for _, tt := range tests {
		put(lapicLVTT, tt.lvtt)
		if got := describeLAPIC(regs); got != tt.want {
			t.Errorf("%s:\n got %q\nwant %q", tt.name, got, tt.want)
		}
	}
}

func TestDescribeIOAPIC(t *testing.T) {
	d := make([]byte, 512)
	binary.LittleEndian.PutUint32(d[16:], 1<<5)
	for pin := 0; pin < 24; pin++ {
		binary.LittleEndian.PutUint64(d[24+8*pin:], 1<<16) // masked
	}
	binary.LittleEndian.PutUint64(d[24+8*4:], 0x24)                   // edge
	binary.LittleEndian.PutUint64(d[24+8*5:], 1<<15|1<<14|1<<12|0x25) // level, waiting for EOI
	want := "irr 0x20 | pin 4 vector 0x24 edge | pin 5 vector 0x25 level remote-irr delivery-pending"
	if got := describeIOAPIC(d); got != want {
		t.Errorf("\n got %q\nwant %q", got, want)
	}
}

// Page tables the stack tests build in guest RAM (4-level paging): a
// kernel stack page mapped through a 4 KiB page whose last words hold
// two return addresses among data, and a 2 MiB page.
const (
	ptPML4, ptPDPT, ptPD, ptPT = 0x1000, 0x2000, 0x3000, 0x4000
	ptStack                    = 0x5000
	ptPDPT2, ptPD2             = 0x6000, 0x7000
	ptLarge                    = 0x200000 // the 2 MiB page
	stackVA                    = 0xffff_c900_0000_3000
	largeVA                    = 0xffff_8880_0020_0000
)

// ptIndex is va's table index at paging level l (1: PT ... 5: PML5).
func ptIndex(va uint64, l int) uint64 { return va >> (12 + 9*(l-1)) & 0x1ff }

// buildTables writes the test page tables and stack into mem.
func buildTables(t testing.TB, mem *guestmem.Memory) {
	put := func(gpa, v uint64) {
		if err := mem.PutUint64(gpa, v); err != nil {
			t.Fatal(err)
		}
	}
	put(ptPML4+8*ptIndex(stackVA, 4), ptPDPT|1)
	put(ptPDPT+8*ptIndex(stackVA, 3), ptPD|1)
	put(ptPD+8*ptIndex(stackVA, 2), ptPT|1)
	put(ptPT+8*ptIndex(stackVA, 1), ptStack|1)
	put(ptPML4+8*ptIndex(largeVA, 4), ptPDPT2|1)
	put(ptPDPT2+8*ptIndex(largeVA, 3), ptPD2|1)
	put(ptPD2+8*ptIndex(largeVA, 2), ptLarge|ptePS|1)
	put(ptStack+0xf00, 0x1234)
	put(ptStack+0xf08, 0xffffffff8150f095)
	put(ptStack+0xf10, 0xffff888000200000) // a direct-map pointer, not text
	put(ptStack+0xf18, 0xffffffff81090703)
	put(ptStack+0xf20, 0xffffffffffffffda) // -ENOSYS in pt_regs, not text
	put(ptStack+0xff8, 0xffffffff81000144) // the page's last word
}

// TestDescribeStack checks the page walk (4 KiB, 2 MiB and 1 GiB pages,
// 5-level paging, a reserved PS bit, unmapped addresses) and the stack's
// kernel addresses (read from RSP rounded down, stopping at an unmapped
// next page); a CR3 outside RAM is named as such, and a hostile table
// pointing outside RAM ends the walk quietly.
func TestDescribeStack(t *testing.T) {
	mem, err := guestmem.New([]guestmem.RegionSpec{{GPA: 0, Size: 4 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	buildTables(t, mem)
	put := func(gpa, v uint64) {
		if err := mem.PutUint64(gpa, v); err != nil {
			t.Fatal(err)
		}
	}
	// A second root, for 5-level paging and a 1 GiB page: PML5 at
	// 0x8000 leads to PML4 0x9000, PDPT 0xa000 mapping 1 GiB at 0.
	const (
		pml5, pml4b, pdptb = 0x8000, 0x9000, 0xa000
		va57               = 0xff12_3456_4000_1234 // canonical with LA57
		gigVA              = 0x0000_0040_0012_3456 // PML4 0, PDPT 0x100
	)
	put(pml5+8*ptIndex(va57, 5), pml4b|1)
	put(pml4b+8*ptIndex(va57, 4), pdptb|1)
	put(pdptb+8*ptIndex(va57, 3), 0|ptePS|1) // 1 GiB page at 0
	put(ptPML4+8*ptIndex(gigVA, 4), pdptb|1)
	put(pdptb+8*ptIndex(gigVA, 3), 0|ptePS|1)
	// A PML4 entry with the reserved PS bit set.
	const psVA = 0x0000_0080_0000_0000 // PML4 index 1
	put(ptPML4+8*ptIndex(psVA, 4), ptPDPT|ptePS|1)

	for _, tt := range []struct {
		name      string
		root, cr4 uint64
		va, want  uint64
		ok        bool
	}{
		{"4 KiB page", ptPML4, 0, stackVA + 0xf08, ptStack + 0xf08, true},
		{"2 MiB page", ptPML4, 0, largeVA + 0x12345, ptLarge + 0x12345, true},
		{"1 GiB page", ptPML4, 0, gigVA, gigVA & (1<<30 - 1), true},
		{"5-level, 1 GiB page", pml5, cr4LA57, va57, va57 & (1<<30 - 1), true},
		{"reserved PS in a PML4 entry", ptPML4, 0, psVA, 0, false},
		{"next page not mapped", ptPML4, 0, stackVA + 0x1000, 0, false},
		{"low address not mapped", ptPML4, 0, 0x1000, 0, false},
	} {
		got, ok := translate(mem, tt.root, tt.cr4, tt.va)
		if got != tt.want || ok != tt.ok {
			t.Errorf("%s: translate(%#x) = %#x, %v; want %#x, %v", tt.name, tt.va, got, ok, tt.want, tt.ok)
		}
	}

	long := kvm.Sregs{CR0: cr0PG, CR3: ptPML4, EFER: eferLMA}
	for _, tt := range []struct {
		name string
		s    kvm.Sregs
		rsp  uint64
		want string
	}{
		{"stack", long, stackVA + 0xf00, "cr3 0x1000, stack [0xffffffff8150f095 0xffffffff81090703 0xffffffff81000144]"},
		// Rounded down to a word, the read stays within the virtual
		// page and ends where the next page is not mapped.
		{"misaligned RSP", long, stackVA + 0xffc, "cr3 0x1000, stack [0xffffffff81000144]"},
		{"CR3 outside RAM", kvm.Sregs{CR0: cr0PG, CR3: 0x1_2345_6000, EFER: eferLMA}, stackVA, "cr3 0x123456000 outside guest RAM"},
		{"RSP at the top of the address space", long, 0xffff_ffff_ffff_fff8, "cr3 0x1000, stack []"},
		{"non-canonical RSP", long, 0x0000_8000_0000_0000, "cr3 0x1000, stack []"},
	} {
		if got := strings.Join(describeStack(mem, tt.s, tt.rsp), ", "); got != tt.want {
			t.Errorf("%s: describeStack = %q, want %q", tt.name, got, tt.want)
		}
	}
	// A hostile PML4 entry pointing past RAM: the walk ends, nothing
	// is listed, nothing panics.
	put(ptPML4+8*ptIndex(stackVA, 4), 0xffff_ffff_f000|1)
	if got := strings.Join(describeStack(mem, long, stackVA+0xf00), ", "); got != "cr3 0x1000, stack []" {
		t.Errorf("describeStack through a table outside RAM = %q", got)
	}
	if got := describeStack(mem, kvm.Sregs{}, 0); got != nil {
		t.Errorf("describeStack in real mode = %q, want nothing", got)
	}
}

// stackReport is the only shape describeStack's output may take: guest
// data appears as hex numbers, nothing else.
var stackReport = regexp.MustCompile(`^cr3 0x[0-9a-f]+( outside guest RAM|, stack \[(0x[0-9a-f]+( 0x[0-9a-f]+)*)?\])$`)

// FuzzDescribeStack feeds guest-controlled page tables and stack (the
// first 64 KiB of RAM) and registers to the diagnosis's page walk: it
// must never panic or read outside RAM, and what it prints is numbers
// only, whatever the guest left there. The seeds hold the tests' page
// tables, so the fuzzer starts from walks that reach the stack.
func FuzzDescribeStack(f *testing.F) {
	const ramSize = 64 << 10
	mem, err := guestmem.New([]guestmem.RegionSpec{{GPA: 0, Size: ramSize}})
	if err != nil {
		f.Fatal(err)
	}
	buildTables(f, mem)
	seed := make([]byte, ramSize)
	if _, err := mem.ReadAt(seed, 0); err != nil {
		f.Fatal(err)
	}
	f.Add(seed, uint64(ptPML4), uint64(0), uint64(stackVA+0xf00))
	f.Add(seed, uint64(ptPML4), uint64(0), uint64(stackVA+0xffc))
	f.Add(seed[:0x6000], uint64(ptPML4), uint64(cr4LA57), uint64(stackVA))
	f.Add(make([]byte, 16), uint64(0xffff_f000), uint64(cr4LA57), uint64(0xffff_ffff_ffff_fff8))
	f.Fuzz(func(t *testing.T, ram []byte, cr3, cr4, rsp uint64) {
		if err := mem.Zero(0, ramSize); err != nil {
			t.Fatal(err)
		}
		if len(ram) > ramSize {
			ram = ram[:ramSize]
		}
		if _, err := mem.WriteAt(ram, 0); err != nil {
			t.Fatal(err)
		}
		s := kvm.Sregs{CR0: cr0PG, CR3: cr3, CR4: cr4, EFER: eferLMA}
		out := strings.Join(describeStack(mem, s, rsp), ", ")
		if !stackReport.MatchString(out) {
			t.Fatalf("describeStack printed %q", out)
		}
	})
}
