// Package guestmem is vessel's one type for guest RAM: a set of
// non-overlapping guest-physical regions, each backed by an anonymous host
// mapping. Every access is range-checked with overflow-safe arithmetic, so
// guest-supplied addresses and lengths can never reach host memory outside
// the mappings (in the spirit of rust-vmm's vm-memory). Device code must read
// and write guest RAM only through this package.
package guestmem

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sort"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ErrOutOfRange is returned (wrapped) when an access falls, wholly or in
// part, outside guest RAM.
var ErrOutOfRange = errors.New("guestmem: range outside guest memory")

// ErrUnaligned is returned (wrapped) by the atomic accessors when the
// address is not naturally aligned.
var ErrUnaligned = errors.New("guestmem: unaligned atomic access")

// RegionSpec describes one guest-physical RAM range to allocate.
type RegionSpec struct {
	GPA  uint64 // guest-physical base address, page aligned
	Size uint64 // length in bytes, page aligned, non-zero
}

// Region is one allocated RAM range and its host backing.
type Region struct {
	GPA  uint64
	Size uint64
	host []byte
}

// End returns the first guest-physical address past the region.
func (r Region) End() uint64 { return r.GPA + r.Size }

// Host returns the host mapping backing the region. Only the VMM uses it,
// to register the region with KVM; devices must use Memory's accessors.
func (r Region) Host() []byte { return r.host }

// Memory is guest RAM. It is safe for concurrent use: the regions never
// change after New, and accesses to the bytes follow the guest's own
// synchronisation (atomic accessors are provided for ring indices).
type Memory struct {
	regions []Region // sorted by GPA, non-overlapping
}

const pageSize = 4096

// New allocates guest RAM for the given regions. The mappings are private,
// anonymous and MAP_NORESERVE: host pages are only committed when the guest
// touches them. Each starts on a 2 MiB host boundary, so that where the
// host backs it with transparent huge pages, KVM can map the guest with
// 2 MiB pages too; an unaligned mapping would get the huge pages' memory
// cost without their fewer faults and TLB entries. The host gives them
// with its transparent_hugepage setting "always", or with "madvise" to
// memory made by NewHuge.
func New(specs []RegionSpec) (*Memory, error) { return newAnon(specs, false) }

// NewHuge is New with transparent huge pages asked for (MADV_HUGEPAGE, as
// QEMU and Cloud Hypervisor do for guest RAM): where the host's setting is
// "always" or "madvise", the guest's first touch of 2 MiB takes one fault
// instead of 512 and KVM maps it with one page-table entry, at the price
// of whole 2 MiB pages resident where the guest touched any part. A
// kernel without transparent huge pages gives ordinary pages.
func NewHuge(specs []RegionSpec) (*Memory, error) { return newAnon(specs, true) }

func newAnon(specs []RegionSpec, huge bool) (*Memory, error) {
	sorted, err := check(specs)
	if err != nil {
		return nil, err
	}
	m := &Memory{}
	for _, s := range sorted {
		b, err := mapAnon(s.Size)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("guestmem: map %d MiB at %#x: %w", s.Size>>20, s.GPA, err)
		}
		if huge {
			// EINVAL: a kernel without transparent huge pages.
			unix.Madvise(b, unix.MADV_HUGEPAGE)
		}
		m.regions = append(m.regions, Region{GPA: s.GPA, Size: s.Size, host: b})
	}
	return m, nil
}

// check returns the regions sorted by address, or why they cannot be
// guest RAM.
func check(specs []RegionSpec) ([]RegionSpec, error) {
	if len(specs) == 0 {
		return nil, errors.New("guestmem: no regions")
	}
	sorted := append([]RegionSpec(nil), specs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].GPA < sorted[j].GPA })
	var prevEnd uint64
	for i, s := range sorted {
		if s.Size == 0 || s.Size%pageSize != 0 || s.GPA%pageSize != 0 {
			return nil, fmt.Errorf("guestmem: region %#x+%#x is not page aligned or is empty", s.GPA, s.Size)
		}
		end, carry := bits.Add64(s.GPA, s.Size, 0)
		if carry != 0 {
			return nil, fmt.Errorf("guestmem: region %#x+%#x overflows the address space", s.GPA, s.Size)
		}
		if i > 0 && s.GPA < prevEnd {
			return nil, fmt.Errorf("guestmem: region at %#x overlaps the previous one", s.GPA)
		}
		if uint64(int(s.Size)) != s.Size {
			return nil, fmt.Errorf("guestmem: region size %#x too large for this host", s.Size)
		}
		prevEnd = end
	}
	return sorted, nil
}

// Close unmaps guest RAM. The Memory must not be used afterwards.
func (m *Memory) Close() error {
	var first error
	for i := range m.regions {
		if m.regions[i].host == nil {
			continue
		}
		if err := unmap(m.regions[i].host); err != nil && first == nil {
			first = fmt.Errorf("guestmem: unmap region %#x: %w", m.regions[i].GPA, err)
		}
		m.regions[i].host = nil
	}
	return first
}

// Regions returns the allocated regions in ascending address order.
func (m *Memory) Regions() []Region { return append([]Region(nil), m.regions...) }

// Size returns the total amount of guest RAM in bytes.
func (m *Memory) Size() uint64 {
	var n uint64
	for _, r := range m.regions {
		n += r.Size
	}
	return n
}

// Slice returns the host bytes backing [gpa, gpa+n). The whole range must
// lie inside one region. The returned slice aliases guest RAM: the guest may
// change it at any time, so callers must copy what they validate.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	end, carry := bits.Add64(gpa, n, 0)
	if carry != 0 {
		return nil, fmt.Errorf("%w: %#x+%#x overflows", ErrOutOfRange, gpa, n)
	}
	for i := range m.regions {
		r := &m.regions[i]
		if gpa >= r.GPA && end <= r.End() && r.host != nil {
			off := gpa - r.GPA
			return r.host[off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("%w: %#x+%#x", ErrOutOfRange, gpa, n)
}

// ReadAt copies len(p) bytes of guest RAM at gpa into p (io.ReaderAt-like,
// with a guest-physical offset). A range outside RAM reads nothing.
func (m *Memory) ReadAt(p []byte, gpa uint64) (int, error) {
	s, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(p, s), nil
}

// WriteAt copies p into guest RAM at gpa. A range outside RAM writes
// nothing.
func (m *Memory) WriteAt(p []byte, gpa uint64) (int, error) {
	s, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(s, p), nil
}

// Zero clears n bytes at gpa.
func (m *Memory) Zero(gpa, n uint64) error {
	s, err := m.Slice(gpa, n)
	if err != nil {
		return err
	}
	clear(s)
	return nil
}

// Uint16 reads a little-endian uint16 at gpa.
func (m *Memory) Uint16(gpa uint64) (uint16, error) {
	s, err := m.Slice(gpa, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(s), nil
}

// Uint32 reads a little-endian uint32 at gpa.
func (m *Memory) Uint32(gpa uint64) (uint32, error) {
	s, err := m.Slice(gpa, 4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(s), nil
}

// Uint64 reads a little-endian uint64 at gpa.
func (m *Memory) Uint64(gpa uint64) (uint64, error) {
	s, err := m.Slice(gpa, 8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(s), nil
}

// PutUint16 writes a little-endian uint16 at gpa.
func (m *Memory) PutUint16(gpa uint64, v uint16) error {
	s, err := m.Slice(gpa, 2)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint16(s, v)
	return nil
}

// PutUint32 writes a little-endian uint32 at gpa.
func (m *Memory) PutUint32(gpa uint64, v uint32) error {
	s, err := m.Slice(gpa, 4)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(s, v)
	return nil
}

// PutUint64 writes a little-endian uint64 at gpa.
func (m *Memory) PutUint64(gpa uint64, v uint64) error {
	s, err := m.Slice(gpa, 8)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(s, v)
	return nil
}

// LoadUint16 atomically reads an aligned uint16 at gpa (virtio ring
// indices are read this way, virtio 1.2 section 2.7.13).
func (m *Memory) LoadUint16(gpa uint64) (uint16, error) {
	p, err := m.atomic16(gpa)
	if err != nil {
		return 0, err
	}
	return loadUint16(p), nil
}

// StoreUint16 atomically writes an aligned uint16 at gpa.
func (m *Memory) StoreUint16(gpa uint64, v uint16) error {
	p, err := m.atomic16(gpa)
	if err != nil {
		return err
	}
	storeUint16(p, v)
	return nil
}

// LoadUint32 atomically reads an aligned uint32 at gpa.
func (m *Memory) LoadUint32(gpa uint64) (uint32, error) {
	if gpa%4 != 0 {
		return 0, fmt.Errorf("%w: %#x", ErrUnaligned, gpa)
	}
	s, err := m.Slice(gpa, 4)
	if err != nil {
		return 0, err
	}
	return atomic.LoadUint32(ptr32(s)), nil
}

// StoreUint32 atomically writes an aligned uint32 at gpa.
func (m *Memory) StoreUint32(gpa uint64, v uint32) error {
	if gpa%4 != 0 {
		return fmt.Errorf("%w: %#x", ErrUnaligned, gpa)
	}
	s, err := m.Slice(gpa, 4)
	if err != nil {
		return err
	}
	atomic.StoreUint32(ptr32(s), v)
	return nil
}

func (m *Memory) atomic16(gpa uint64) (*uint16, error) {
	if gpa%2 != 0 {
		return nil, fmt.Errorf("%w: %#x", ErrUnaligned, gpa)
	}
	s, err := m.Slice(gpa, 2)
	if err != nil {
		return nil, err
	}
	return ptr16(s), nil
}

// Discard returns to the host the pages wholly inside [gpa, gpa+n)
// (madvise MADV_DONTNEED) and reports how many bytes that was; partial
// pages at either end are kept. The range must lie inside one region.
// A discarded page of anonymous RAM reads as zeros when next touched; a
// page of RAM mapped from a snapshot file (NewFromFile) reads as the
// file's again. Only memory the guest gave up may be discarded (a
// balloon's pages, pages it reported free).
func (m *Memory) Discard(gpa, n uint64) (uint64, error) {
	s, err := m.Slice(gpa, n)
	if err != nil {
		return 0, err
	}
	start := (gpa + pageSize - 1) &^ (pageSize - 1)
	end := (gpa + n) &^ (pageSize - 1)
	if end <= start {
		return 0, nil
	}
	// Region mappings start on a page boundary, so do these offsets.
	b := s[start-gpa : end-gpa]
	if err := unix.Madvise(b, unix.MADV_DONTNEED); err != nil {
		return 0, fmt.Errorf("guestmem: discard %#x+%#x: %w", start, end-start, err)
	}
	return end - start, nil
}
