package guestmem

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"
)

// smapsEntry returns the /proc/self/smaps lines of the mapping that
// starts at addr, or "" if none starts there.
func smapsEntry(t *testing.T, addr uintptr) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	head := fmt.Sprintf("%x-", addr)
	var out []string
	in := false
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			if in {
				break
			}
			in = strings.HasPrefix(l, head)
		}
		if in {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestHugePageRAM checks that anonymous guest RAM starts on a 2 MiB host
// boundary (where KVM can map a huge page the host backs it with) and is
// exactly as large as the region: the reservation's ends were given back.
func TestHugePageRAM(t *testing.T) {
	for _, size := range []uint64{4 << 10, 6 << 20, 64<<20 + 4<<10} {
		m := newMem(t, RegionSpec{GPA: 0, Size: size}, RegionSpec{GPA: 1 << 32, Size: 2 << 20})
		for _, r := range m.Regions() {
			addr := uintptr(unsafe.Pointer(&r.Host()[0]))
			if addr%hugeAlign != 0 {
				t.Errorf("region %#x+%#x: host address %#x is not 2 MiB aligned", r.GPA, r.Size, addr)
			}
			e := smapsEntry(t, addr)
			if e == "" {
				t.Fatalf("region %#x+%#x: no mapping starts at %#x", r.GPA, r.Size, addr)
			}
			var lo, hi uintptr
			fmt.Sscanf(e, "%x-%x", &lo, &hi)
			if hi-lo != uintptr(r.Size) {
				t.Errorf("region %#x+%#x: mapping %#x-%#x is %d bytes", r.GPA, r.Size, lo, hi, hi-lo)
			}
		}
		// The whole region is usable, to its last byte.
		last := size - 1
		if _, err := m.WriteAt([]byte{0xa5}, last); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		if _, err := m.ReadAt(b[:], last); err != nil || b[0] != 0xa5 {
			t.Fatalf("read back %#x: %v %#x", last, err, b[0])
		}
	}
}

// TestCloseUnmaps checks that Close gives back the mappings of both
// kinds of RAM: anonymous (New) and a snapshot's file (NewFromFile).
func TestCloseUnmaps(t *testing.T) {
	specs := []RegionSpec{{GPA: 0, Size: 4 << 20}}
	f, err := os.CreateTemp(t.TempDir(), "mem")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(4 << 20); err != nil {
		t.Fatal(err)
	}
	for name, alloc := range map[string]func() (*Memory, error){
		"anonymous": func() (*Memory, error) { return New(specs) },
		"file":      func() (*Memory, error) { return NewFromFile(specs, f) },
	} {
		m, err := alloc()
		if err != nil {
			t.Fatal(err)
		}
		addr := uintptr(unsafe.Pointer(&m.Regions()[0].Host()[0]))
		if smapsEntry(t, addr) == "" {
			t.Fatalf("%s: no mapping at %#x before Close", name, addr)
		}
		if err := m.Close(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if e := smapsEntry(t, addr); e != "" {
			t.Errorf("%s: still mapped after Close:\n%s", name, e)
		}
	}
}

// TestNewHuge checks that NewHuge asks for transparent huge pages
// (MADV_HUGEPAGE: "hg" among the mapping's VmFlags) and New does not.
func TestNewHuge(t *testing.T) {
	if _, err := os.Stat("/sys/kernel/mm/transparent_hugepage"); err != nil {
		t.Skipf("this kernel has no transparent huge pages (%v): MADV_HUGEPAGE fails and nothing is asked", err)
	}
	for _, huge := range []bool{false, true} {
		alloc := New
		if huge {
			alloc = NewHuge
		}
		m, err := alloc([]RegionSpec{{GPA: 0, Size: 8 << 20}})
		if err != nil {
			t.Fatal(err)
		}
		e := smapsEntry(t, uintptr(unsafe.Pointer(&m.Regions()[0].Host()[0])))
		var flags string
		for _, l := range strings.Split(e, "\n") {
			if strings.HasPrefix(l, "VmFlags:") {
				flags = l
			}
		}
		if got := strings.Contains(flags+" ", " hg "); got != huge {
			t.Errorf("huge pages asked %v, want %v: %s", got, huge, flags)
		}
		m.Close()
	}
}
