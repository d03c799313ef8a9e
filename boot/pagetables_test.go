package boot

import (
	"fmt"
	"testing"

	"github.com/vesselvm/vessel/guestmem"
)

// translate walks the 4-level page tables at cr3 like the MMU does for a
// 64-bit linear address, returning the physical address.
func translate(mem *guestmem.Memory, cr3, va uint64) (uint64, error) {
	table := cr3 &^ 0xFFF
	for level, shift := range []uint{39, 30, 21, 12} {
		idx := va >> shift & 0x1FF
		pte, err := mem.Uint64(table + idx*8)
		if err != nil {
			return 0, err
		}
		if pte&ptePresent == 0 {
			return 0, fmt.Errorf("%#x not mapped at level %d", va, 4-level)
		}
		if pte&pteWritable == 0 {
			return 0, fmt.Errorf("%#x read-only at level %d", va, 4-level)
		}
		addr := pte & 0x000F_FFFF_FFFF_F000
		if pte&ptePageSize != 0 {
			switch shift {
			case 21:
				return addr&^(1<<21-1) | va&(1<<21-1), nil
			default:
				return 0, fmt.Errorf("unexpected large page at level %d", 4-level)
			}
		}
		if shift == 12 {
			return addr | va&0xFFF, nil
		}
		table = addr
	}
	return 0, fmt.Errorf("unreachable")
}

func TestPageTables(t *testing.T) {
	mem := newMem(t, 5*gib)
	e, err := load(mem, defaultBz().build(), initrdBytes(4096), "console=ttyS0", 1)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	for _, va := range []uint64{
		0, GDTAddr, ZeroPageAddr, ZeroPageAddr + ZeroPageSize - 1,
		BootStackPointer - 8, CmdlineAddr, MPTableAddr,
		KernelLoadAddr, e.RIP, e.KernelEnd - 1, 16*mib + 32*mib - 1,
		e.InitrdAddr, e.InitrdAddr + e.InitrdSize - 1,
		2*gib + 12345, MMIOHoleStart - 1, IOAPICAddr, LAPICAddr, 4*gib - 1,
	} {
		pa, err := translate(mem, e.CR3, va)
		if err != nil {
			t.Errorf("translate(%#x): %v", va, err)
			continue
		}
		if pa != va {
			t.Errorf("translate(%#x) = %#x, want identity", va, pa)
		}
	}
	for _, va := range []uint64{4 * gib, 5 * gib, 1 << 39} {
		if pa, err := translate(mem, e.CR3, va); err == nil {
			t.Errorf("translate(%#x) = %#x, want unmapped", va, pa)
		}
	}
}
