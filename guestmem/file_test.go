package guestmem

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// Memory written with WriteTo and mapped back with NewFromFile reads the
// same; the guest's writes to the mapping stay out of the file.
func TestFileRoundTrip(t *testing.T) {
	specs := []RegionSpec{{GPA: 0x100000, Size: 4 * pageSize}, {GPA: 0, Size: 2 * pageSize}}
	m, err := New(specs)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, w := range []struct {
		gpa  uint64
		data string
	}{{0x10, "low"}, {0x100000 + 3*pageSize + 7, "high"}} {
		if _, err := m.WriteAt([]byte(w.data), w.gpa); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "memory")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := m.WriteTo(f)
	f.Close()
	if err != nil || n != 6*pageSize {
		t.Fatalf("WriteTo = %d, %v; want %d", n, err, 6*pageSize)
	}
	before, _ := os.ReadFile(path)
	f, err = os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := NewFromFile(specs, f)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, gpa := range []uint64{0, 0x100000} {
		a, b := make([]byte, 2*pageSize), make([]byte, 2*pageSize)
		m.ReadAt(a, gpa)
		r.ReadAt(b, gpa)
		if !bytes.Equal(a, b) {
			t.Errorf("region at %#x differs after the round trip", gpa)
		}
	}
	if _, err := r.WriteAt([]byte("guest"), 0x20); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("a write to the restored memory reached the file")
	}
	if _, err := NewFromFile([]RegionSpec{{GPA: 0, Size: pageSize}}, f); err == nil {
		t.Error("a file larger than the regions was mapped")
	}
}
