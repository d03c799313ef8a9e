package guestmem

import (
	"bytes"
	"errors"
	"math"
	"sync"
	"testing"
)

func newMem(t *testing.T, specs ...RegionSpec) *Memory {
	t.Helper()
	m, err := New(specs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		name  string
		specs []RegionSpec
	}{
		{"none", nil},
		{"empty region", []RegionSpec{{GPA: 0, Size: 0}}},
		{"unaligned size", []RegionSpec{{GPA: 0, Size: 100}}},
		{"unaligned base", []RegionSpec{{GPA: 1, Size: 4096}}},
		{"overflow", []RegionSpec{{GPA: math.MaxUint64 - 4095, Size: 8192}}},
		{"overlap", []RegionSpec{{GPA: 0, Size: 8192}, {GPA: 4096, Size: 4096}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if m, err := New(tc.specs); err == nil {
				m.Close()
				t.Fatal("New succeeded")
			}
		})
	}
}

func TestRangeChecks(t *testing.T) {
	// Two regions with a hole between them, like RAM below and above the
	// 32-bit MMIO hole.
	m := newMem(t, RegionSpec{GPA: 0, Size: 1 << 20}, RegionSpec{GPA: 4 << 20, Size: 1 << 20})
	for _, tc := range []struct {
		name string
		gpa  uint64
		n    uint64
		ok   bool
	}{
		{"start", 0, 16, true},
		{"end of first", 1<<20 - 16, 16, true},
		{"straddles first end", 1<<20 - 8, 16, false},
		{"in the hole", 2 << 20, 1, false},
		{"across the hole", 1<<20 - 1, 3<<20 + 2, false},
		{"second region", 4 << 20, 4096, true},
		{"past the end", 5 << 20, 1, false},
		{"zero length at end", 1 << 20, 0, true},
		{"wrap around", math.MaxUint64, 2, false},
		{"huge length", 16, math.MaxUint64, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := m.Slice(tc.gpa, tc.n)
			if tc.ok {
				if err != nil || uint64(len(s)) != tc.n || uint64(cap(s)) != tc.n {
					t.Fatalf("Slice(%#x, %#x) = len %d cap %d, %v", tc.gpa, tc.n, len(s), cap(s), err)
				}
				return
			}
			if !errors.Is(err, ErrOutOfRange) {
				t.Fatalf("Slice(%#x, %#x) err = %v, want ErrOutOfRange", tc.gpa, tc.n, err)
			}
		})
	}
}

func TestAccessors(t *testing.T) {
	m := newMem(t, RegionSpec{GPA: 0x1000, Size: 0x2000})
	if err := m.PutUint64(0x1000, 0x1122334455667788); err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Uint32(0x1000); v != 0x55667788 {
		t.Errorf("Uint32 = %#x", v)
	}
	if v, _ := m.Uint16(0x1006); v != 0x1122 {
		t.Errorf("Uint16 = %#x", v)
	}
	if err := m.PutUint32(0x2ffe, 1); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("PutUint32 straddling the end = %v", err)
	}
	if _, err := m.Uint64(0); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Uint64 below RAM = %v", err)
	}
	buf := []byte("hello guest")
	if _, err := m.WriteAt(buf, 0x1800); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(buf))
	if _, err := m.ReadAt(got, 0x1800); err != nil || !bytes.Equal(got, buf) {
		t.Errorf("ReadAt = %q, %v", got, err)
	}
	if err := m.Zero(0x1800, uint64(len(buf))); err != nil {
		t.Fatal(err)
	}
	m.ReadAt(got, 0x1800)
	if !bytes.Equal(got, make([]byte, len(buf))) {
		t.Errorf("Zero left %q", got)
	}
	if m.Size() != 0x2000 {
		t.Errorf("Size = %#x", m.Size())
	}
}

func TestAtomics(t *testing.T) {
	m := newMem(t, RegionSpec{GPA: 0, Size: 4096})
	if err := m.StoreUint16(2, 0xBEEF); err != nil {
		t.Fatal(err)
	}
	if err := m.StoreUint16(0, 0x1234); err != nil {
		t.Fatal(err)
	}
	if v, _ := m.LoadUint32(0); v != 0xBEEF1234 {
		t.Errorf("halves = %#x, want 0xbeef1234", v)
	}
	if v, _ := m.LoadUint16(2); v != 0xBEEF {
		t.Errorf("LoadUint16 = %#x", v)
	}
	if _, err := m.LoadUint16(1); !errors.Is(err, ErrUnaligned) {
		t.Errorf("unaligned LoadUint16 = %v", err)
	}
	if err := m.StoreUint32(2, 0); !errors.Is(err, ErrUnaligned) {
		t.Errorf("unaligned StoreUint32 = %v", err)
	}
	if err := m.StoreUint16(4096, 0); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("StoreUint16 past the end = %v", err)
	}
	// A 16-bit store writes its two bytes and no others.
	m.WriteAt([]byte{1, 2, 3, 4, 5, 6, 7, 8}, 16)
	for _, off := range []uint64{16, 18, 20, 22} {
		m.StoreUint16(off, 0xA0A0)
	}
	m.StoreUint16(18, 0x0B0A)
	m.StoreUint16(20, 0x0D0C)
	got := make([]byte, 10)
	m.ReadAt(got, 15)
	if want := []byte{0, 0xA0, 0xA0, 0x0A, 0x0B, 0x0C, 0x0D, 0xA0, 0xA0, 0}; !bytes.Equal(got, want) {
		t.Errorf("bytes around 16-bit stores = % x, want % x", got, want)
	}
	// Concurrent stores to the two halves of one word never lose either.
	var wg sync.WaitGroup
	for half := uint64(0); half < 2; half++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10000; i++ {
				m.StoreUint16(8+2*half, uint16(i))
			}
		}()
	}
	wg.Wait()
	if a, _ := m.LoadUint16(8); a != 9999 {
		t.Errorf("low half = %d", a)
	}
	if b, _ := m.LoadUint16(10); b != 9999 {
		t.Errorf("high half = %d", b)
	}
}

func TestClose(t *testing.T) {
	m, err := New([]RegionSpec{{GPA: 0, Size: 4096}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Slice(0, 1); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("access after Close = %v", err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestDiscard(t *testing.T) {
	m, err := New([]RegionSpec{{GPA: 0, Size: 1 << 20}, {GPA: 4 << 20, Size: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	fill := func() {
		for _, r := range m.Regions() {
			b, _ := m.Slice(r.GPA, r.Size)
			for i := range b {
				b[i] = 0xAA
			}
		}
	}
	at := func(gpa uint64) byte {
		var b [1]byte
		if _, err := m.ReadAt(b[:], gpa); err != nil {
			t.Fatal(err)
		}
		return b[0]
	}
	for _, tc := range []struct {
		name    string
		gpa, n  uint64
		want    uint64 // bytes discarded
		zero    []uint64
		kept    []uint64
		wantErr bool
	}{
		{"whole pages", 0x2000, 0x3000, 0x3000, []uint64{0x2000, 0x4fff}, []uint64{0x1fff, 0x5000}, false},
		{"partial ends kept", 0x2001, 0x3000, 0x2000, []uint64{0x3000, 0x4fff}, []uint64{0x2001, 0x2fff, 0x5000}, false},
		{"less than a page", 0x2100, 0x100, 0, nil, []uint64{0x2100}, false},
		{"second region", 4<<20 + 0x1000, 0x1000, 0x1000, []uint64{4<<20 + 0x1000}, []uint64{4 << 20}, false},
		{"across a hole", 0xff000, 0x2000, 0, nil, []uint64{0xff000}, true},
		{"outside RAM", 2 << 20, 0x1000, 0, nil, nil, true},
		{"overflow", ^uint64(0) - 0xfff, 0x2000, 0, nil, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fill()
			got, err := m.Discard(tc.gpa, tc.n)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("Discard(%#x, %#x) = %#x, %v; want %#x, error %v", tc.gpa, tc.n, got, err, tc.want, tc.wantErr)
			}
			for _, a := range tc.zero {
				if b := at(a); b != 0 {
					t.Errorf("byte at %#x is %#x after discard, want 0", a, b)
				}
			}
			for _, a := range tc.kept {
				if b := at(a); b != 0xAA {
					t.Errorf("byte at %#x is %#x, want it kept (0xaa)", a, b)
				}
			}
		})
	}
}
