package vmm

import (
	"encoding/binary"
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

// TestDescribeStack builds 4-level page tables in guest RAM that map a
// kernel stack page (through a 4 KiB page) and a 2 MiB page, and checks
// the walk and the stack's kernel addresses; and that a CR3 outside RAM
// is named as such, and a hostile table pointing outside RAM ends the
// walk quietly.
func TestDescribeStack(t *testing.T) {
	mem, err := guestmem.New([]guestmem.RegionSpec{{GPA: 0, Size: 4 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	const (
		pml4, pdpt, pd, pt = 0x1000, 0x2000, 0x3000, 0x4000
		stackPage          = 0x5000
		pdpt2, pd2         = 0x6000, 0x7000
		large              = 0x200000 // the 2 MiB page
		stackVA            = 0xffff_c900_0000_3000
		largeVA            = 0xffff_8880_0020_0000
	)
	idx := func(va uint64, l int) uint64 { return va >> (12 + 9*(l-1)) & 0x1ff }
	put := func(gpa, v uint64) {
		if err := mem.PutUint64(gpa, v); err != nil {
			t.Fatal(err)
		}
	}
	put(pml4+8*idx(stackVA, 4), pdpt|1)
	put(pdpt+8*idx(stackVA, 3), pd|1)
	put(pd+8*idx(stackVA, 2), pt|1)
	put(pt+8*idx(stackVA, 1), stackPage|1)
	put(pml4+8*idx(largeVA, 4), pdpt2|1)
	put(pdpt2+8*idx(largeVA, 3), pd2|1)
	put(pd2+8*idx(largeVA, 2), large|ptePS|1)
	// The stack: two return addresses among data.
	put(stackPage+0xf00, 0x1234)
	put(stackPage+0xf08, 0xffffffff8150f095)
	put(stackPage+0xf10, 0xffff888000200000) // a direct-map pointer, not text
	put(stackPage+0xf18, 0xffffffff81090703)

	for _, tt := range []struct {
		va, want uint64
		ok       bool
	}{
		{stackVA + 0xf08, stackPage + 0xf08, true},
		{largeVA + 0x12345, large + 0x12345, true},
		{stackVA + 0x1000, 0, false}, // the next page: not mapped
		{0x1000, 0, false},
	} {
		got, ok := translate(mem, pml4, 0, tt.va)
		if got != tt.want || ok != tt.ok {
			t.Errorf("translate(%#x) = %#x, %v; want %#x, %v", tt.va, got, ok, tt.want, tt.ok)
		}
	}

	long := kvm.Sregs{CR0: cr0PG, CR3: pml4, EFER: eferLMA}
	got := strings.Join(describeStack(mem, long, stackVA+0xf00), ", ")
	if want := "cr3 0x1000, stack [0xffffffff8150f095 0xffffffff81090703]"; got != want {
		t.Errorf("describeStack = %q, want %q", got, want)
	}
	outside := long
	outside.CR3 = 0x1_2345_6000
	if got := strings.Join(describeStack(mem, outside, stackVA), ", "); got != "cr3 0x123456000 outside guest RAM" {
		t.Errorf("describeStack with CR3 outside RAM = %q", got)
	}
	// A hostile PML4 entry pointing past RAM: the walk ends, nothing
	// is listed, nothing panics.
	put(pml4+8*idx(stackVA, 4), 0xffff_ffff_f000|1)
	if got := strings.Join(describeStack(mem, long, stackVA+0xf00), ", "); got != "cr3 0x1000, stack []" {
		t.Errorf("describeStack through a table outside RAM = %q", got)
	}
	if got := describeStack(mem, kvm.Sregs{}, 0); got != nil {
		t.Errorf("describeStack in real mode = %q, want nothing", got)
	}
}

// FuzzDescribeStack feeds guest-controlled page tables and stack (the
// first 64 KiB of RAM) and registers to the diagnosis's page walk: it
// must never panic or read outside RAM, whatever the guest left there.
func FuzzDescribeStack(f *testing.F) {
	f.Add([]byte{0x01, 0x10}, uint64(0x1000), uint64(0), uint64(0xffff_c900_0000_3000))
	f.Add(make([]byte, 16), uint64(0xffff_f000), uint64(cr4LA57), uint64(0xffff_ffff_ffff_fff8))
	mem, err := guestmem.New([]guestmem.RegionSpec{{GPA: 0, Size: 64 << 10}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, ram []byte, cr3, cr4, rsp uint64) {
		if err := mem.Zero(0, 64<<10); err != nil {
			t.Fatal(err)
		}
		if len(ram) > 64<<10 {
			ram = ram[:64<<10]
		}
		if _, err := mem.WriteAt(ram, 0); err != nil {
			t.Fatal(err)
		}
		s := kvm.Sregs{CR0: cr0PG, CR3: cr3, CR4: cr4, EFER: eferLMA}
		out := describeStack(mem, s, rsp)
		if len(out) == 0 {
			t.Fatal("no description in long mode")
		}
	})
}
