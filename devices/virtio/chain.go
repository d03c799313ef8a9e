package virtio

import (
	"errors"
	"io"

	"github.com/vesselvm/vessel/guestmem"
)

// Descriptor is one buffer of a chain, already checked to lie in guest RAM
// when the chain was popped.
type Descriptor struct {
	Addr  uint64
	Len   uint32
	Write bool // device-writable (VIRTQ_DESC_F_WRITE)
}

// Chain is one request: the device-readable descriptors, then the
// device-writable ones (virtio 1.2 §2.7.4.2). Devices read and write it only
// through Reader and Writer, never by slicing guest RAM themselves.
type Chain struct {
	Head  uint16
	Descs []Descriptor
	mem   *guestmem.Memory
}

// ReadableLen returns the bytes the driver gave the device to read.
func (c *Chain) ReadableLen() uint64 {
	var n uint64
	for _, d := range c.Descs {
		if !d.Write {
			n += uint64(d.Len)
		}
	}
	return n
}

// WritableLen returns the room the driver gave the device to write into.
func (c *Chain) WritableLen() uint64 {
	var n uint64
	for _, d := range c.Descs {
		if d.Write {
			n += uint64(d.Len)
		}
	}
	return n
}

// ErrShortChain is returned when a request needs more bytes than its
// chain holds.
var ErrShortChain = errors.New("virtio: descriptor chain too short")

// cursor walks a subset of a chain's descriptors byte by byte.
type cursor struct {
	mem   *guestmem.Memory
	descs []Descriptor
	idx   int    // current descriptor
	off   uint32 // offset into descs[idx]
	done  uint64 // bytes consumed
	total uint64
}

func newCursor(mem *guestmem.Memory, all []Descriptor, write bool) cursor {
	c := cursor{mem: mem}
	for _, d := range all {
		if d.Write == write {
			c.descs = append(c.descs, d)
			c.total += uint64(d.Len)
		}
	}
	return c
}

// next returns the host bytes of up to max bytes at the cursor and
// advances it. The slice aliases guest RAM.
func (c *cursor) next(max int) ([]byte, error) {
	for c.idx < len(c.descs) && c.off == c.descs[c.idx].Len {
		c.idx, c.off = c.idx+1, 0
	}
	if c.idx == len(c.descs) {
		return nil, io.EOF
	}
	d := c.descs[c.idx]
	n := uint64(d.Len - c.off)
	if uint64(max) < n {
		n = uint64(max)
	}
	b, err := c.mem.Slice(d.Addr+uint64(c.off), n)
	if err != nil {
		return nil, err
	}
	c.off += uint32(n)
	c.done += n
	return b, nil
}

// seek moves the cursor back to pos bytes from the start (pos <= done).
func (c *cursor) seek(pos uint64) {
	c.idx, c.off, c.done = 0, 0, pos
	for c.idx < len(c.descs) && pos > uint64(c.descs[c.idx].Len) {
		pos -= uint64(c.descs[c.idx].Len)
		c.idx++
	}
	c.off = uint32(pos)
}

// Reader reads the device-readable part of a chain.
type Reader struct{ cur cursor }

// Reader returns a reader over the chain's device-readable descriptors.
func (c *Chain) Reader() *Reader {
	return &Reader{newCursor(c.mem, c.Descs, false)}
}

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		b, err := r.cur.next(len(p) - n)
		if err != nil {
			if n > 0 && err == io.EOF {
				return n, nil
			}
			return n, err
		}
		n += copy(p[n:], b)
	}
	return n, nil
}

// Remaining returns the readable bytes not read yet.
func (r *Reader) Remaining() uint64 { return r.cur.total - r.cur.done }

// ReadFull fills p or fails with ErrShortChain.
func (r *Reader) ReadFull(p []byte) error {
	if _, err := io.ReadFull(r, p); err != nil {
		return ErrShortChain
	}
	return nil
}

// Buffers returns the remaining readable bytes as slices of guest RAM, for
// vectored I/O to a host file or socket, and consumes them. The slices
// alias guest RAM.
func (r *Reader) Buffers(max uint64) ([][]byte, error) {
	var bufs [][]byte
	for max > 0 {
		chunk := 1 << 30
		if max < uint64(chunk) {
			chunk = int(max)
		}
		b, err := r.cur.next(chunk)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		bufs = append(bufs, b)
		max -= uint64(len(b))
	}
	return bufs, nil
}

// Writer writes the device-writable part of a chain.
type Writer struct{ cur cursor }

// Writer returns a writer over the chain's device-writable descriptors.
func (c *Chain) Writer() *Writer {
	return &Writer{newCursor(c.mem, c.Descs, true)}
}

// Write implements io.Writer; writing past the chain's room fails with
// ErrShortChain after filling it.
func (w *Writer) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		b, err := w.cur.next(len(p) - n)
		if err == io.EOF {
			return n, ErrShortChain
		}
		if err != nil {
			return n, err
		}
		n += copy(b, p[n:])
	}
	return n, nil
}

// Written returns the bytes written so far: the length Push reports.
func (w *Writer) Written() uint32 { return uint32(w.cur.done) }

// Remaining returns the writable room left.
func (w *Writer) Remaining() uint64 { return w.cur.total - w.cur.done }

// Buffers returns up to max bytes of the remaining writable room as slices
// of guest RAM, for vectored reads from a host file or socket, and
// consumes them (they count as written).
func (w *Writer) Buffers(max uint64) ([][]byte, error) {
	r := Reader{w.cur}
	bufs, err := r.Buffers(max)
	w.cur = r.cur
	return bufs, err
}

// seekEnd moves the writer to k bytes before the end of its room (for a
// trailing status byte).
func (w *Writer) seekEnd(k uint64) {
	if k > w.cur.total {
		k = w.cur.total
	}
	w.cur.seek(w.cur.total - k)
}

// Unconsume gives back the last n bytes taken by Buffers (after a short
// read from the host): they do not count as written.
func (w *Writer) Unconsume(n uint64) {
	if n > w.cur.done {
		n = w.cur.done
	}
	w.cur.seek(w.cur.done - n)
}
