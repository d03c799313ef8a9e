// Package virtio implements virtio 1.2 devices for vessel: split
// virtqueues (virtio 1.2 §2.7), the MMIO transport (§4.2) and the device
// models that sit on it. It sees guest RAM only through guestmem.Memory and
// raises interrupts only through devices.Interrupt; it never imports kvm or
// vmm.
//
// A guest may be hostile. Every address, length, index and flag read from
// guest memory is checked before use; a queue that breaks the rules stops
// with an error (the transport then sets DEVICE_NEEDS_RESET) instead of
// panicking, looping or touching memory outside guest RAM.
package virtio

import (
	"errors"
	"fmt"

	"github.com/vesselvm/vessel/guestmem"
)

// Split virtqueue layout constants (virtio 1.2 §2.7).
const (
	descSize     = 16 // struct virtq_desc: addr u64, len u32, flags u16, next u16
	usedElemSize = 8  // struct virtq_used_elem: id u32, len u32

	descFNext     = 1 // VIRTQ_DESC_F_NEXT
	descFWrite    = 2 // VIRTQ_DESC_F_WRITE
	descFIndirect = 4 // VIRTQ_DESC_F_INDIRECT

	availFNoInterrupt = 1 // VIRTQ_AVAIL_F_NO_INTERRUPT
	usedFNoNotify     = 1 // VIRTQ_USED_F_NO_NOTIFY

	// MaxQueueSize is the largest split queue (virtio 1.2 §2.7: Queue
	// Size is at most 32768).
	MaxQueueSize = 32768

	// maxChainBytes bounds the bytes one chain may describe, in both
	// directions together: a chain must stay below it (virtio 1.2
	// §2.7.5.2: no chain longer than 2^32 bytes in total), so that what
	// the device writes always fits the used element's 32-bit length.
	maxChainBytes = 1 << 32
)

// ErrQueue is wrapped by every error that comes from a malformed queue or
// descriptor chain: the driver broke the virtio rules, and the device
// must be reset (virtio 1.2 §2.1.2, DEVICE_NEEDS_RESET).
var ErrQueue = errors.New("virtio: malformed queue")

func queueErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrQueue, fmt.Sprintf(format, a...))
}

// QueueConfig is what the driver programmed for one queue through the
// transport.
type QueueConfig struct {
	Size   uint16 // number of descriptors, a power of two
	Desc   uint64 // guest-physical address of the descriptor table
	Driver uint64 // the driver area (available ring)
	Device uint64 // the device area (used ring)
}

// Validate checks the configuration against the split-queue rules and
// guest RAM (virtio 1.2 §2.7: alignment 16/2/4, size a power of two).
func (c QueueConfig) Validate(mem *guestmem.Memory, maxSize uint16) error {
	n := uint64(c.Size)
	switch {
	case c.Size == 0 || c.Size&(c.Size-1) != 0:
		return queueErr("queue size %d is not a power of two", c.Size)
	case c.Size > maxSize:
		return queueErr("queue size %d above the device maximum %d", c.Size, maxSize)
	case c.Desc%16 != 0 || c.Driver%2 != 0 || c.Device%4 != 0:
		return queueErr("misaligned rings (desc %#x, driver %#x, device %#x)", c.Desc, c.Driver, c.Device)
	}
	for _, r := range []struct {
		name      string
		gpa, size uint64
	}{
		{"descriptor table", c.Desc, descSize * n},
		{"available ring", c.Driver, 6 + 2*n},
		{"used ring", c.Device, 6 + usedElemSize*n},
	} {
		if _, err := mem.Slice(r.gpa, r.size); err != nil {
			return queueErr("%s at %#x+%#x is not in guest RAM", r.name, r.gpa, r.size)
		}
	}
	return nil
}

// Queue is a split virtqueue as the device sees it. It is not safe for
// concurrent use: one goroutine (the device's worker for that queue) owns
// it.
type Queue struct {
	mem      *guestmem.Memory
	cfg      QueueConfig
	eventIdx bool // VIRTIO_F_EVENT_IDX negotiated
	indirect bool // VIRTIO_F_INDIRECT_DESC negotiated

	nextAvail uint16 // next available-ring entry to consume
	nextUsed  uint16 // next used-ring entry to fill

	// signalledUsed is the used index at the last interrupt the driver
	// was sent (for VIRTIO_F_EVENT_IDX suppression).
	signalledUsed uint16
	signalled     bool
}

// NewQueue returns a queue over a validated configuration. features are
// the negotiated feature bits: FeatureEventIdx turns on used_event and
// avail_event, FeatureIndirectDesc lets chains use indirect tables.
func NewQueue(mem *guestmem.Memory, cfg QueueConfig, maxSize uint16, features uint64) (*Queue, error) {
	if err := cfg.Validate(mem, maxSize); err != nil {
		return nil, err
	}
	return &Queue{
		mem:      mem,
		cfg:      cfg,
		eventIdx: features&FeatureEventIdx != 0,
		indirect: features&FeatureIndirectDesc != 0,
	}, nil
}

// Size returns the number of descriptors.
func (q *Queue) Size() uint16 { return q.cfg.Size }

func (q *Queue) availIdx() (uint16, error) {
	// The driver publishes the index after the ring entries (with a write
	// barrier); the atomic load orders our later reads of the ring after
	// it.
	return q.mem.LoadUint16(q.cfg.Driver + 2)
}

// Pending reports whether the driver has made buffers available that Pop
// has not returned yet.
func (q *Queue) Pending() (bool, error) {
	idx, err := q.availIdx()
	if err != nil {
		return false, err
	}
	return idx != q.nextAvail, nil
}

// Pop returns the next available descriptor chain, or nil when there is
// none.
func (q *Queue) Pop() (*Chain, error) {
	idx, err := q.availIdx()
	if err != nil {
		return nil, err
	}
	if idx == q.nextAvail {
		return nil, nil
	}
	if n := idx - q.nextAvail; n > q.cfg.Size {
		return nil, queueErr("available index moved by %d, more than the queue size %d", n, q.cfg.Size)
	}
	slot := uint64(q.nextAvail % q.cfg.Size)
	head, err := q.mem.Uint16(q.cfg.Driver + 4 + 2*slot)
	if err != nil {
		return nil, err
	}
	q.nextAvail++
	c, err := q.walk(head)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// desc reads descriptor i of the table at table (n entries).
func (q *Queue) desc(table uint64, n, i uint32) (Descriptor, uint16, uint16, error) {
	if i >= n {
		return Descriptor{}, 0, 0, queueErr("descriptor index %d outside a table of %d", i, n)
	}
	var b [descSize]byte
	if _, err := q.mem.ReadAt(b[:], table+uint64(i)*descSize); err != nil {
		return Descriptor{}, 0, 0, queueErr("descriptor %d: %v", i, err)
	}
	d := Descriptor{
		Addr: le64(b[0:]),
		Len:  le32(b[8:]),
	}
	flags, next := le16(b[12:]), le16(b[14:])
	d.Write = flags&descFWrite != 0
	return d, flags, next, nil
}

// walk resolves the chain starting at head (virtio 1.2 §2.7.5, §2.7.5.3).
// Every descriptor is checked to lie in guest RAM. The work is bounded by
// the queue size, whatever the guest wrote: a direct chain visits at most
// the table's Size entries (so a loop ends in an error), an indirect table
// may hold at most Size entries too (§2.7.5.3.1: no chain longer than the
// queue size), and indirect tables are followed only as the chain's first
// descriptor, so a chain never has more than Size descriptors.
func (q *Queue) walk(head uint16) (*Chain, error) {
	c := &Chain{Head: head, mem: q.mem}
	table, n := q.cfg.Desc, uint32(q.cfg.Size)
	i := uint32(head)
	indirect, sawWrite := false, false
	var total uint64
	for visited := uint32(0); ; visited++ {
		if visited >= n {
			return nil, queueErr("descriptor chain from %d loops or is longer than its table (%d)", head, n)
		}
		d, flags, next, err := q.desc(table, n, i)
		if err != nil {
			return nil, err
		}
		if flags&descFIndirect != 0 {
			switch {
			case !q.indirect:
				return nil, queueErr("indirect descriptor in chain %d without VIRTIO_F_INDIRECT_DESC", head)
			case indirect:
				return nil, queueErr("nested indirect descriptor in chain %d", head)
			case flags&descFNext != 0:
				return nil, queueErr("indirect descriptor with NEXT in chain %d", head)
			case d.Len == 0 || d.Len%descSize != 0:
				return nil, queueErr("indirect table length %d is not a non-zero multiple of 16", d.Len)
			case d.Len/descSize > uint32(q.cfg.Size):
				return nil, queueErr("indirect table of %d descriptors in chain %d, more than the queue size %d", d.Len/descSize, head, q.cfg.Size)
			case len(c.Descs) != 0:
				// §2.7.5.3.1: the driver must not set INDIRECT
				// together with other descriptors in the chain;
				// Linux never does.
				return nil, queueErr("indirect descriptor after direct ones in chain %d", head)
			}
			if _, err := q.mem.Slice(d.Addr, uint64(d.Len)); err != nil {
				return nil, queueErr("indirect table at %#x+%#x is not in guest RAM", d.Addr, d.Len)
			}
			table, n, i, indirect, visited = d.Addr, d.Len/descSize, 0, true, ^uint32(0)
			continue
		}
		if d.Len > 0 {
			if _, err := q.mem.Slice(d.Addr, uint64(d.Len)); err != nil {
				return nil, queueErr("buffer %#x+%#x of chain %d is not in guest RAM", d.Addr, d.Len, head)
			}
		}
		if d.Write {
			sawWrite = true
		} else if sawWrite {
			return nil, queueErr("device-readable descriptor after a writable one in chain %d", head)
		}
		total += uint64(d.Len)
		if total >= maxChainBytes {
			return nil, queueErr("chain %d describes 4 GiB or more", head)
		}
		c.Descs = append(c.Descs, d)
		if flags&descFNext == 0 {
			break
		}
		i = uint32(next)
	}
	return c, nil
}

// Push returns a chain to the driver with written bytes of device output
// (virtio 1.2 §2.7.8).
func (q *Queue) Push(head uint16, written uint32) error {
	slot := uint64(q.nextUsed % q.cfg.Size)
	elem := q.cfg.Device + 4 + usedElemSize*slot
	if err := q.mem.PutUint32(elem, uint32(head)); err != nil {
		return err
	}
	if err := q.mem.PutUint32(elem+4, written); err != nil {
		return err
	}
	q.nextUsed++
	// The atomic store publishes the element before the index (and is a
	// full barrier on x86, which NeedsInterrupt's read of used_event
	// relies on).
	return q.mem.StoreUint16(q.cfg.Device+2, q.nextUsed)
}

// NeedsInterrupt reports whether the driver wants an interrupt for the
// buffers pushed since the last one (virtio 1.2 §2.7.7.2: used_event with
// VIRTIO_F_EVENT_IDX, else the NO_INTERRUPT flag).
func (q *Queue) NeedsInterrupt() (bool, error) {
	if !q.eventIdx {
		flags, err := q.mem.LoadUint16(q.cfg.Driver)
		if err != nil {
			return false, err
		}
		return flags&availFNoInterrupt == 0, nil
	}
	old, newIdx := q.signalledUsed, q.nextUsed
	valid := q.signalled
	q.signalledUsed, q.signalled = newIdx, true
	if !valid {
		return true, nil
	}
	usedEvent, err := q.mem.LoadUint16(q.cfg.Driver + 4 + 2*uint64(q.cfg.Size))
	if err != nil {
		return false, err
	}
	// vring_need_event: interrupt if used_event lies in [old, new).
	return newIdx-usedEvent-1 < newIdx-old, nil
}

// EnableNotify tells the driver to notify the device for the next buffer it
// makes available (with VIRTIO_F_EVENT_IDX, by setting avail_event to the
// next entry). The caller must check Pending afterwards: a buffer made
// available before the driver saw the change sent no notification.
func (q *Queue) EnableNotify() error {
	if q.eventIdx {
		return q.mem.StoreUint16(q.cfg.Device+4+usedElemSize*uint64(q.cfg.Size), q.nextAvail)
	}
	return q.mem.StoreUint16(q.cfg.Device, 0)
}

// PopOrArm pops the next available chain. When there is none, it asks the
// driver for a notification (EnableNotify) and looks once more: again
// reports that buffers arrived meanwhile (call PopOrArm again), and
// neither c nor again means the caller should wait for the notification.
func (q *Queue) PopOrArm() (c *Chain, again bool, err error) {
	if c, err = q.Pop(); c != nil || err != nil {
		return c, false, err
	}
	if err := q.EnableNotify(); err != nil {
		return nil, false, err
	}
	again, err = q.Pending()
	return nil, again, err
}

// DisableNotify tells the driver that notifications are not needed while
// the device is already processing the queue (without EVENT_IDX, through
// VIRTQ_USED_F_NO_NOTIFY; with it, avail_event simply stays behind).
func (q *Queue) DisableNotify() error {
	if q.eventIdx {
		return nil
	}
	return q.mem.StoreUint16(q.cfg.Device, usedFNoNotify)
}

func le16(b []byte) uint16 { return uint16(b[0]) | uint16(b[1])<<8 }
func le32(b []byte) uint32 { return uint32(le16(b)) | uint32(le16(b[2:]))<<16 }
func le64(b []byte) uint64 { return uint64(le32(b)) | uint64(le32(b[4:]))<<32 }
