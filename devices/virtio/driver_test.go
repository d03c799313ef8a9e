package virtio

import (
	"encoding/binary"
	"testing"

	"github.com/vesselvm/vessel/guestmem"
)

// Test guest layout: 1 MiB of RAM at 0; rings at fixed addresses, buffers
// from bufBase up.
const (
	testRAM    = 1 << 20
	testDesc   = 0x1000
	testAvail  = 0x3000
	testUsed   = 0x4000
	testIndir  = 0x6000
	bufBase    = 0x10000
	testQSize  = 16
	testMaxQSz = 256
)

func newTestMem(t testing.TB) *guestmem.Memory {
	t.Helper()
	m, err := guestmem.New([]guestmem.RegionSpec{{GPA: 0, Size: testRAM}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// driver plays the guest's side of a split queue, writing guest memory the
// way Linux's virtio_ring does.
type driver struct {
	t     testing.TB
	mem   *guestmem.Memory
	cfg   QueueConfig
	avail uint16
	next  uint16 // next free descriptor
	buf   uint64 // next free buffer address
}

func newDriver(t testing.TB, mem *guestmem.Memory) *driver {
	return &driver{t: t, mem: mem, cfg: QueueConfig{Size: testQSize, Desc: testDesc, Driver: testAvail, Device: testUsed}, buf: bufBase}
}

// seg is one descriptor a test asks for.
type seg struct {
	data  []byte // contents (readable) or nil
	n     uint32 // length when data is nil
	write bool
}

func (d *driver) put16(gpa uint64, v uint16) {
	if err := d.mem.PutUint16(gpa, v); err != nil {
		d.t.Fatal(err)
	}
}

// writeDesc writes descriptor i of the table at table.
func (d *driver) writeDesc(table uint64, i uint16, addr uint64, n uint32, flags, next uint16) {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], n)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
	if _, err := d.mem.WriteAt(b[:], table+uint64(i)*16); err != nil {
		d.t.Fatal(err)
	}
}

// alloc returns guest addresses for a buffer of n bytes.
func (d *driver) alloc(n uint32) uint64 {
	a := d.buf
	d.buf += uint64(n+15) &^ 15
	return a
}

// chain writes segs as a direct chain and returns its head and the
// addresses of each buffer.
func (d *driver) chain(segs ...seg) (uint16, []uint64) {
	head := d.next
	var addrs []uint64
	for i, s := range segs {
		n := s.n
		if s.data != nil {
			n = uint32(len(s.data))
		}
		a := d.alloc(n)
		if s.data != nil {
			d.mem.WriteAt(s.data, a)
		}
		addrs = append(addrs, a)
		var flags uint16
		if s.write {
			flags |= descFWrite
		}
		idx := d.next
		d.next = (d.next + 1) % d.cfg.Size
		if i < len(segs)-1 {
			flags |= descFNext
		}
		d.writeDesc(d.cfg.Desc, idx, a, n, flags, d.next)
	}
	return head, addrs
}

// indirect writes segs into an indirect table and one direct descriptor
// pointing at it.
func (d *driver) indirect(segs ...seg) (uint16, []uint64) {
	var addrs []uint64
	for i, s := range segs {
		n := s.n
		if s.data != nil {
			n = uint32(len(s.data))
		}
		a := d.alloc(n)
		if s.data != nil {
			d.mem.WriteAt(s.data, a)
		}
		addrs = append(addrs, a)
		var flags uint16
		if s.write {
			flags |= descFWrite
		}
		if i < len(segs)-1 {
			flags |= descFNext
		}
		d.writeDesc(testIndir, uint16(i), a, n, flags, uint16(i+1))
	}
	head := d.next
	d.next = (d.next + 1) % d.cfg.Size
	d.writeDesc(d.cfg.Desc, head, testIndir, uint32(16*len(segs)), descFIndirect, 0)
	return head, addrs
}

// offer makes head available.
func (d *driver) offer(head uint16) {
	d.put16(d.cfg.Driver+4+2*uint64(d.avail%d.cfg.Size), head)
	d.avail++
	d.put16(d.cfg.Driver+2, d.avail)
}

// used returns used-ring entry i.
func (d *driver) used(i uint16) (id, n uint32) {
	e := d.cfg.Device + 4 + 8*uint64(i%d.cfg.Size)
	id, _ = d.mem.Uint32(e)
	n, _ = d.mem.Uint32(e + 4)
	return id, n
}

func (d *driver) usedIdx() uint16 {
	v, _ := d.mem.Uint16(d.cfg.Device + 2)
	return v
}

// queue returns the device's side of the queue with the given features
// negotiated.
func (d *driver) queue(features uint64) *Queue {
	q, err := NewQueue(d.mem, d.cfg, testMaxQSz, features)
	if err != nil {
		d.t.Fatal(err)
	}
	return q
}

// startDriver runs the driver initialisation over the MMIO transport
// (virtio 1.2 §3.1.1): reset, feature negotiation (VERSION_1 plus
// features), each queue set up from its driver, DRIVER_OK.
func startDriver(t testing.TB, m *MMIO, features uint64, queues ...*driver) {
	t.Helper()
	wr(m, regStatus, 0)
	wr(m, regStatus, StatusAcknowledge)
	wr(m, regStatus, StatusAcknowledge|StatusDriver)
	features |= FeatureVersion1
	wr(m, regDriverFeatSel, 0)
	wr(m, regDriverFeatures, uint32(features))
	wr(m, regDriverFeatSel, 1)
	wr(m, regDriverFeatures, uint32(features>>32))
	wr(m, regStatus, StatusAcknowledge|StatusDriver|StatusFeaturesOK)
	for i, d := range queues {
		wr(m, regQueueSel, uint32(i))
		if max := rd(m, regQueueNumMax); max < uint32(d.cfg.Size) {
			t.Fatalf("queue %d: max size %d, below %d", i, max, d.cfg.Size)
		}
		wr(m, regQueueNum, uint32(d.cfg.Size))
		wr(m, regQueueDescLow, uint32(d.cfg.Desc))
		wr(m, regQueueDrvLow, uint32(d.cfg.Driver))
		wr(m, regQueueDevLow, uint32(d.cfg.Device))
		wr(m, regQueueReady, 1)
	}
	wr(m, regStatus, StatusAcknowledge|StatusDriver|StatusFeaturesOK|StatusDriverOK)
	if st := rd(m, regStatus); st&StatusDriverOK == 0 || st&StatusNeedsReset != 0 {
		t.Fatalf("status %#x after init", st)
	}
}
