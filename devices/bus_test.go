package devices

import (
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"
)

// recDevice records its last access and reads back its id in every byte.
type recDevice struct {
	id      byte
	mu      sync.Mutex
	lastOff uint64
	lastLen int
	writes  atomic.Int64
}

func (d *recDevice) Read(off uint64, data []byte) {
	d.mu.Lock()
	d.lastOff, d.lastLen = off, len(data)
	d.mu.Unlock()
	for i := range data {
		data[i] = d.id
	}
}

func (d *recDevice) Write(off uint64, data []byte) {
	d.mu.Lock()
	d.lastOff, d.lastLen = off, len(data)
	d.mu.Unlock()
	d.writes.Add(1)
}

func TestBusInsert(t *testing.T) {
	type ins struct {
		base, size uint64
		want       error
	}
	tests := []struct {
		name string
		ins  []ins
	}{
		{"size zero", []ins{{0x10, 0, ErrBadRange}}},
		{"overflow", []ins{{math.MaxUint64, 2, ErrBadRange}}},
		{"overflow big", []ins{{1 << 63, 1 << 63, nil}, {0, 1 << 63, nil}, {5, math.MaxUint64, ErrBadRange}}},
		{"ends at 2^64", []ins{{math.MaxUint64, 1, nil}, {math.MaxUint64 - 1, 1, nil}}},
		{"whole space", []ins{{0, math.MaxUint64, nil}, {math.MaxUint64, 1, nil}}},
		{"adjacent", []ins{{0x10, 0x10, nil}, {0x20, 0x10, nil}, {0x00, 0x10, nil}}},
		{"identical", []ins{{0x10, 0x10, nil}, {0x10, 0x10, ErrOverlap}}},
		{"overlap start", []ins{{0x10, 0x10, nil}, {0x08, 0x09, ErrOverlap}}},
		{"overlap end", []ins{{0x10, 0x10, nil}, {0x1f, 0x10, ErrOverlap}}},
		{"contained", []ins{{0x10, 0x10, nil}, {0x14, 0x2, ErrOverlap}}},
		{"containing", []ins{{0x10, 0x10, nil}, {0x0, 0x100, ErrOverlap}}},
		{"between", []ins{{0x10, 0x10, nil}, {0x30, 0x10, nil}, {0x20, 0x10, nil}, {0x1f, 0x2, ErrOverlap}}},
		{"gap too small", []ins{{0x10, 0x10, nil}, {0x30, 0x10, nil}, {0x20, 0x11, ErrOverlap}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBus("test")
			for i, in := range tt.ins {
				err := b.Insert(&recDevice{}, in.base, in.size)
				if !errors.Is(err, in.want) || (in.want == nil) != (err == nil) {
					t.Fatalf("insert %d [%#x,+%#x): err %v, want %v", i, in.base, in.size, err, in.want)
				}
			}
		})
	}
	if err := NewBus("x").Insert(nil, 0, 1); !errors.Is(err, ErrBadRange) {
		t.Errorf("nil device: err %v, want ErrBadRange", err)
	}
}

func TestBusLookup(t *testing.T) {
	b := NewBus("pio")
	a, c, e := &recDevice{id: 'a'}, &recDevice{id: 'c'}, &recDevice{id: 'e'}
	for _, r := range []struct {
		d          *recDevice
		base, size uint64
	}{{c, 0x3f8, 8}, {a, 0x60, 5}, {e, math.MaxUint64 - 3, 4}} {
		if err := b.Insert(r.d, r.base, r.size); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		addr uint64
		n    int
		dev  *recDevice // nil: no match
		off  uint64
	}{
		{0x60, 1, a, 0},
		{0x64, 1, a, 4},
		{0x61, 4, a, 1},
		{0x62, 4, nil, 0}, // straddles the end
		{0x5f, 2, nil, 0}, // straddles the start
		{0x65, 1, nil, 0},
		{0x3f8, 8, c, 0},
		{0x3f8, 9, nil, 0},
		{0x3ff, 1, c, 7},
		{0x3ff, 2, nil, 0},
		{0x400, 1, nil, 0},
		{0, 1, nil, 0},
		{0x60, 0, nil, 0}, // empty access
		{math.MaxUint64, 1, e, 3},
		{math.MaxUint64 - 3, 4, e, 0},
		{math.MaxUint64, 2, nil, 0}, // would wrap around
		{math.MaxUint64 - 4, 2, nil, 0},
	}
	for _, tt := range tests {
		data := make([]byte, tt.n)
		for i := range data {
			data[i] = 0x5a
		}
		ok := b.Read(tt.addr, data)
		if ok != (tt.dev != nil) {
			t.Errorf("Read(%#x, %d) = %v", tt.addr, tt.n, ok)
			continue
		}
		wok := b.Write(tt.addr, data)
		if wok != ok {
			t.Errorf("Write(%#x, %d) = %v, Read = %v", tt.addr, tt.n, wok, ok)
		}
		if !ok {
			for _, v := range data {
				if v != 0x5a {
					t.Errorf("Read(%#x, %d) touched data on a miss", tt.addr, tt.n)
					break
				}
			}
			continue
		}
		if tt.dev.lastOff != tt.off || tt.dev.lastLen != tt.n {
			t.Errorf("access %#x/%d: device %c saw offset %#x len %d, want %#x", tt.addr, tt.n, tt.dev.id, tt.dev.lastOff, tt.dev.lastLen, tt.off)
		}
		for _, v := range data {
			if v != tt.dev.id {
				t.Errorf("access %#x/%d: read %q, want device %c", tt.addr, tt.n, data, tt.dev.id)
				break
			}
		}
	}
}

// TestBusConcurrent does lookups from many goroutines while devices are
// inserted; run with -race.
func TestBusConcurrent(t *testing.T) {
	b := NewBus("mmio")
	const n = 64
	devs := make([]*recDevice, n)
	for i := range devs {
		devs[i] = &recDevice{id: byte(i)}
	}
	// Insert the even slots first, the odd ones during the lookups.
	for i := 0; i < n; i += 2 {
		if err := b.Insert(devs[i], uint64(i)*0x1000, 0x1000); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; i < n; i += 2 {
			if err := b.Insert(devs[i], uint64(i)*0x1000, 0x1000); err != nil {
				t.Error(err)
			}
		}
	}()
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf [4]byte
			for k := 0; k < 2000; k++ {
				i := (k*7 + g) % n
				addr := uint64(i)*0x1000 + 0xffc
				ok := b.Read(addr, buf[:])
				if i%2 == 0 && !ok {
					t.Errorf("slot %d not found", i)
					return
				}
				if ok && buf[0] != byte(i) {
					t.Errorf("slot %d read device %d", i, buf[0])
					return
				}
				b.Write(addr, buf[:])
			}
		}()
	}
	wg.Wait()
	for i := range devs {
		var buf [1]byte
		if !b.Read(uint64(i)*0x1000, buf[:]) || buf[0] != byte(i) {
			t.Errorf("after inserts: slot %d missing", i)
		}
	}
}

func BenchmarkBusRead(b *testing.B) {
	bus := NewBus("pio")
	for i := uint64(0); i < 32; i++ {
		if err := bus.Insert(&recDevice{}, i*0x100, 8); err != nil {
			b.Fatal(err)
		}
	}
	b.RunParallel(func(pb *testing.PB) {
		var buf [1]byte
		for pb.Next() {
			bus.Read(0x1300+5, buf[:])
		}
	})
}
