package guestmem

import (
	"bytes"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// NewFromFile maps guest RAM from a file holding the regions one after
// the other, in ascending address order (as WriteTo writes them). The
// mappings are MAP_PRIVATE: a page is read from the file when the guest
// first touches it, and a page the guest writes becomes the process's own
// copy, so the file is never changed and every VM mapping it shares the
// pages none of them wrote. The file must be exactly as large as the
// regions and must not change while the memory is mapped.
func NewFromFile(specs []RegionSpec, f *os.File) (*Memory, error) {
	m, err := check(specs)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("guestmem: %w", err)
	}
	var total uint64
	for _, s := range m {
		total += s.Size
	}
	if uint64(st.Size()) != total {
		return nil, fmt.Errorf("guestmem: memory file %s has %d bytes, the regions %d", f.Name(), st.Size(), total)
	}
	mem := &Memory{}
	var off int64
	for _, s := range m {
		b, err := mapFile(int(f.Fd()), off, s.Size)
		if err != nil {
			mem.Close()
			return nil, fmt.Errorf("guestmem: map %d MiB of %s at %#x: %w", s.Size>>20, f.Name(), s.GPA, err)
		}
		mem.regions = append(mem.regions, Region{GPA: s.GPA, Size: s.Size, host: b})
		populate(f, off, b)
		off += int64(s.Size)
	}
	return mem, nil
}

// madvPopulateRead is MADV_POPULATE_READ (Linux 5.14, mman-common.h).
const madvPopulateRead = 22

// populate maps in, read-only, the pages of b (the file's bytes from
// off) that hold data: what the snapshotted guest had written, which a
// restored guest mostly touches again at once. Each would otherwise
// take a page fault on first touch, and inside a VM a nested one; the
// holes (pages of zeros, never written) stay unmapped. A kernel without
// MADV_POPULATE_READ, or a file system without SEEK_DATA, leaves every
// page to its first touch, as before.
func populate(f *os.File, off int64, b []byte) {
	end := off + int64(len(b))
	for pos := off; pos < end; {
		data, err := unix.Seek(int(f.Fd()), pos, unix.SEEK_DATA)
		if err != nil || data >= end {
			return
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil || hole > end {
			hole = end
		}
		lo, hi := data-off, hole-off
		lo &^= pageSize - 1
		if err := unix.Madvise(b[lo:hi], madvPopulateRead); err != nil {
			return
		}
		pos = hole
	}
}

// WriteTo writes guest RAM to f, the regions one after the other in
// ascending address order, and leaves pages of zeros as holes (the file
// is sparse where the guest never wrote). It returns the bytes the file
// spans. f must be empty.
func (m *Memory) WriteTo(f *os.File) (int64, error) {
	var off int64
	for _, r := range m.regions {
		for p := uint64(0); p < r.Size; p += pageSize {
			page := r.host[p : p+pageSize]
			if allZero(page) {
				continue
			}
			if _, err := f.WriteAt(page, off+int64(p)); err != nil {
				return 0, fmt.Errorf("guestmem: write %s: %w", f.Name(), err)
			}
		}
		off += int64(r.Size)
	}
	if err := f.Truncate(off); err != nil {
		return 0, fmt.Errorf("guestmem: size %s: %w", f.Name(), err)
	}
	return off, nil
}

// zeroPage is compared against with bytes.Equal, whose assembly is many
// times faster than a byte loop over a guest's RAM.
var zeroPage [pageSize]byte

func allZero(b []byte) bool { return bytes.Equal(b, zeroPage[:]) }
