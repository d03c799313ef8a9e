package devices

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
)

// Device is a device model attached to a Bus: it sees offsets from the base
// of the range it was inserted at.
//
// Read fills data (normally of length 1, 2, 4 or 8) with the register
// contents at offset; registers the model does not implement read as zero
// or 0xff as the hardware would. Write stores data at offset. Both may be
// called concurrently from several vCPU goroutines, so a Device does its own
// locking. A Device must accept any offset and any len(data) without
// panicking: the guest chooses both.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

// ErrOverlap is returned (wrapped) by Bus.Insert when the new range
// intersects a range already on the bus.
var ErrOverlap = errors.New("devices: range overlaps an existing device")

// ErrBadRange is returned (wrapped) by Bus.Insert for an empty range, a
// range whose end overflows 64 bits, or a nil device.
var ErrBadRange = errors.New("devices: invalid bus range")

// busRange is one device and the half-open address range [base, base+size).
type busRange struct {
	base, size uint64
	dev        Device
}

// Bus maps address ranges to devices: one Bus serves port I/O, another
// MMIO. Lookups (Read, Write) are lock-free: they binary-search an
// immutable slice sorted by base address, published through an atomic
// pointer; Insert, which happens at VM setup, copies the slice under a
// mutex and swaps it. All methods are safe for concurrent use.
type Bus struct {
	name   string
	mu     sync.Mutex                 // serialises Insert
	ranges atomic.Pointer[[]busRange] // sorted by base, non-overlapping
}

// NewBus returns an empty bus; name (e.g. "pio", "mmio") appears in errors.
func NewBus(name string) *Bus {
	b := &Bus{name: name}
	b.ranges.Store(&[]busRange{})
	return b
}

// Name returns the name the bus was created with.
func (b *Bus) Name() string { return b.name }

// Insert attaches d to the range [base, base+size). It fails with
// ErrBadRange if d is nil, size is 0 or base+size overflows (a range may end
// exactly at 2^64), and with ErrOverlap if the range intersects one already
// on the bus. Adjacent ranges are fine.
func (b *Bus) Insert(d Device, base, size uint64) error {
	if d == nil {
		return fmt.Errorf("%w: bus %s: nil device at %#x", ErrBadRange, b.name, base)
	}
	// last is the inclusive end, so a range may end at 2^64-1 without overflowing.
	last := base + size - 1
	if size == 0 || last < base {
		return fmt.Errorf("%w: bus %s: base %#x size %#x", ErrBadRange, b.name, base, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old := *b.ranges.Load()
	i := sort.Search(len(old), func(i int) bool { return old[i].base > base })
	// Ranges are sorted and disjoint, so only the neighbours can intersect.
	if i > 0 {
		p := old[i-1]
		if p.base+p.size-1 >= base {
			return fmt.Errorf("%w: bus %s: [%#x, +%#x) overlaps [%#x, +%#x)",
				ErrOverlap, b.name, base, size, p.base, p.size)
		}
	}
	if i < len(old) && old[i].base <= last {
		n := old[i]
		return fmt.Errorf("%w: bus %s: [%#x, +%#x) overlaps [%#x, +%#x)",
			ErrOverlap, b.name, base, size, n.base, n.size)
	}
	next := make([]busRange, 0, len(old)+1)
	next = append(next, old[:i]...)
	next = append(next, busRange{base: base, size: size, dev: d})
	next = append(next, old[i:]...)
	b.ranges.Store(&next)
	return nil
}

// find returns the device whose range wholly contains [addr, addr+n) and the
// offset of addr in it. An access that straddles the end of a range, or has
// n == 0, matches nothing.
func (b *Bus) find(addr uint64, n int) (Device, uint64, bool) {
	if n <= 0 {
		return nil, 0, false
	}
	rs := *b.ranges.Load()
	// First range starting above addr; the candidate is the one before it.
	lo, hi := 0, len(rs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if rs[m].base <= addr {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == 0 {
		return nil, 0, false
	}
	r := rs[lo-1]
	off := addr - r.base // addr >= r.base
	if off >= r.size || uint64(n) > r.size-off {
		return nil, 0, false
	}
	return r.dev, off, true
}

// Read forwards a guest read of len(data) bytes at addr to the device
// covering it. It returns false, leaving data untouched, if no single device
// covers [addr, addr+len(data)) entirely.
func (b *Bus) Read(addr uint64, data []byte) bool {
	d, off, ok := b.find(addr, len(data))
	if ok {
		d.Read(off, data)
	}
	return ok
}

// Write forwards a guest write of data at addr to the device covering it. It
// returns false if no single device covers [addr, addr+len(data)) entirely.
func (b *Bus) Write(addr uint64, data []byte) bool {
	d, off, ok := b.find(addr, len(data))
	if ok {
		d.Write(off, data)
	}
	return ok
}
