package boot

import (
	"errors"
	"reflect"
	"testing"

	"github.com/vesselvm/vessel/guestmem"
)

func TestRAMLayout(t *testing.T) {
	tests := []struct {
		size uint64
		want []guestmem.RegionSpec
	}{
		{0, nil},
		{64 * mib, []guestmem.RegionSpec{{GPA: 0, Size: 64 * mib}}},
		{3 * gib, []guestmem.RegionSpec{{GPA: 0, Size: 3 * gib}}},
		{3*gib + 4096, []guestmem.RegionSpec{{GPA: 0, Size: 3 * gib}, {GPA: 4 * gib, Size: 4096}}},
		{5 * gib, []guestmem.RegionSpec{{GPA: 0, Size: 3 * gib}, {GPA: 4 * gib, Size: 2 * gib}}},
	}
	for _, tt := range tests {
		if got := RAMLayout(tt.size); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("RAMLayout(%#x) = %+v, want %+v", tt.size, got, tt.want)
		}
	}
}

func TestMemoryMap(t *testing.T) {
	low := func(end uint64) []E820Entry {
		return []E820Entry{
			{0, 0x9FC00, E820RAM},
			{0x9FC00, 0x100000 - 0x9FC00, E820Reserved},
			{0x100000, end - 0x100000, E820RAM},
		}
	}
	tests := []struct {
		name string
		size uint64
		want []E820Entry
	}{
		{"64 MiB", 64 * mib, low(64 * mib)},
		{"3 GiB", 3 * gib, low(3 * gib)},
		{"3 GiB + 1 page", 3*gib + 4096, append(low(3*gib), E820Entry{4 * gib, 4096, E820RAM})},
		{"5 GiB", 5 * gib, append(low(3*gib), E820Entry{4 * gib, 2 * gib, E820RAM})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := newMem(t, tt.size)
			got := MemoryMap(mem)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("MemoryMap:\n got %+v\nwant %+v", got, tt.want)
			}
			var ram uint64
			for _, e := range got {
				if e.Type == E820RAM {
					ram += e.Size
				}
			}
			if ram+(HighMemStart-EBDAStart) != tt.size {
				t.Errorf("RAM in map %#x + reserved != %#x", ram, tt.size)
			}
			// The zero page carries the same table.
			if _, err := load(mem, defaultBz().build(), nil, "", 1); err != nil {
				t.Fatalf("Load: %v", err)
			}
			if n := readMem(t, mem, ZeroPageAddr+0x1E8, 1)[0]; int(n) != len(tt.want) {
				t.Errorf("e820_entries = %d, want %d", n, len(tt.want))
			}
		})
	}
}

func TestMemoryMapOddRegions(t *testing.T) {
	// Regions that do not follow RAMLayout: the map follows them anyway,
	// merging adjacent regions of the same type.
	mem, err := guestmem.New([]guestmem.RegionSpec{
		{GPA: 0, Size: 0x9F000},
		{GPA: 0x9F000, Size: 0x2000},  // straddles EBDAStart
		{GPA: 0xA1000, Size: 0x61000}, // reserved, then RAM from 1 MiB
		{GPA: 0x200000, Size: 0x1000},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	want := []E820Entry{
		{0, 0x9FC00, E820RAM},
		{0x9FC00, 0x100000 - 0x9FC00, E820Reserved},
		{0x100000, 0x2000, E820RAM},
		{0x200000, 0x1000, E820RAM},
	}
	if got := MemoryMap(mem); !reflect.DeepEqual(got, want) {
		t.Errorf("MemoryMap:\n got %+v\nwant %+v", got, want)
	}
}

func TestTooManyRegions(t *testing.T) {
	specs := RAMLayout(64 * mib)
	for i := range MaxE820Entries {
		specs = append(specs, guestmem.RegionSpec{GPA: 4*gib + uint64(i)*2*4096, Size: 4096})
	}
	mem, err := guestmem.New(specs)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if _, err := load(mem, defaultBz().build(), nil, "", 1); !errors.Is(err, ErrTooManyRegions) {
		t.Errorf("bzImage: %v, want ErrTooManyRegions", err)
	}
	if _, err := load(mem, defaultELF().build(), nil, "", 1); !errors.Is(err, ErrTooManyRegions) {
		t.Errorf("PVH: %v, want ErrTooManyRegions", err)
	}
}
