package virtio

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vesselvm/vessel/devices"
	"github.com/vesselvm/vessel/guestmem"
)

// blkGuest drives a block device the way Linux's virtio_blk and
// virtio_ring do with VIRTIO_F_EVENT_IDX, from several submitting
// goroutines at once (blk-mq's contexts) and an interrupt handler
// (vm_interrupt, then virtblk_done): a request is offered under the
// queue's lock, the device is notified only when avail_event asks for
// it (virtqueue_kick_prepare), and completions are seen only after an
// interrupt, which reads and ACKs InterruptStatus, then takes used
// entries with callbacks disabled (used_event set to 0, Linux's hack) and
// re-enables them (used_event at the last used entry, a full barrier,
// and one more look: virtqueue_enable_cb). A device that loses a
// notification or an interrupt anywhere leaves a request waiting for
// ever; the guest gives up after blkGuestWait and says where the rings
// stood.
type blkGuest struct {
	t   *testing.T
	m   *MMIO
	mem *guestmem.Memory
	cfg QueueConfig
	irq chan struct{}

	mu       sync.Mutex
	room     *sync.Cond // signalled when descriptors are freed
	free     []uint16
	avail    uint16 // avail_idx_shadow
	lastUsed uint16
	// cbOff is VRING_AVAIL_F_NO_INTERRUPT in avail_flags_shadow;
	// triggered is vq->event_triggered.
	cbOff, triggered bool
	chains           map[uint16][]uint16
	waiting          map[uint16]chan byte // head -> its status byte

	irqs, spurious, kicks int
	broken                bool // the device used a chain not in flight
}

// Buffers of the guest: a 8 KiB area per descriptor head.
const (
	blkGuestBuf    = 0x10000
	blkGuestStride = 0x2000
	blkGuestQSize  = 64
	blkGuestWait   = 10 * time.Second
)

func newBlkGuest(t *testing.T, start uint16) *blkGuest {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	blk, err := NewBlock(f, false, "irq")
	if err != nil {
		t.Fatal(err)
	}
	mem := newTestMem(t)
	g := &blkGuest{t: t, mem: mem, irq: make(chan struct{}, 1),
		cfg:    QueueConfig{Size: blkGuestQSize, Desc: testDesc, Driver: testAvail, Device: testUsed},
		chains: map[uint16][]uint16{}, waiting: map[uint16]chan byte{}}
	g.room = sync.NewCond(&g.mu)
	for i := uint16(0); i < g.cfg.Size; i++ {
		g.free = append(g.free, i)
	}
	// An edge-triggered line: an edge while the handler runs makes it
	// run once more (the LAPIC's IRR), more edges meanwhile add nothing.
	edge := devices.InterruptFunc(func() error {
		select {
		case g.irq <- struct{}{}:
		default:
		}
		return nil
	})
	m, err := NewMMIO(blk, mem, edge, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	g.m = m
	d := &driver{t: t, mem: mem, cfg: g.cfg}
	if st := initDevice(t, m, d, FeatureVersion1|FeatureEventIdx); st&StatusDriverOK == 0 {
		t.Fatalf("status %#x", st)
	}
	if start != 0 {
		// Move both rings to start, as a restored VM's may be: the
		// device is quiesced, the guest's indexes set, and the device
		// restored at those positions.
		st := m.Quiesce()
		st.Queues[0].NextAvail, st.Queues[0].NextUsed = start, start
		d.put16(g.cfg.Driver+2, start)
		d.put16(g.cfg.Device+2, start)
		d.put16(g.cfg.Device+4+8*uint64(g.cfg.Size), start) // avail_event
		if err := m.Restore(st); err != nil {
			t.Fatal(err)
		}
		g.avail, g.lastUsed = start, start
	}
	done := make(chan struct{})
	go g.handleInterrupts(done)
	t.Cleanup(func() { close(done) })
	return g
}

func (g *blkGuest) usedEventAddr() uint64  { return g.cfg.Driver + 4 + 2*uint64(g.cfg.Size) }
func (g *blkGuest) availEventAddr() uint64 { return g.cfg.Device + 4 + 8*uint64(g.cfg.Size) }

func (g *blkGuest) load(gpa uint64) uint16 {
	v, err := g.mem.LoadUint16(gpa)
	if err != nil {
		g.t.Error(err)
	}
	return v
}

// storeMB stores v at gpa followed by a full barrier (virtio_store_mb;
// XCHG).
func (g *blkGuest) storeMB(gpa uint64, v uint16) {
	if err := g.mem.StoreUint16(gpa, v); err != nil {
		g.t.Error(err)
	}
}

// request submits one request: a header, data (written to the disk when
// out is set, else read into a buffer of len(data)) and the status byte.
// It returns the status and, for a read, the data.
func (g *blkGuest) request(typ uint32, sector uint64, data []byte) (byte, []byte, error) {
	g.mu.Lock()
	for len(g.free) < 3 {
		g.room.Wait()
	}
	descs := append([]uint16(nil), g.free[len(g.free)-3:]...)
	g.free = g.free[:len(g.free)-3]
	head := descs[0]
	buf := uint64(blkGuestBuf + blkGuestStride*uint64(head))
	g.mem.WriteAt(blkHeader(typ, sector), buf)
	statusAddr := buf + 16 + uint64(len(data))
	g.mem.WriteAt([]byte{0xff}, statusAddr)
	d := &driver{t: g.t, mem: g.mem, cfg: g.cfg}
	segs := []struct {
		addr  uint64
		n     uint32
		flags uint16
	}{{buf, 16, 0}, {buf + 16, uint32(len(data)), 0}, {statusAddr, 1, descFWrite}}
	if typ == blkTOut {
		g.mem.WriteAt(data, buf+16)
	} else {
		segs[1].flags = descFWrite
	}
	if len(data) == 0 {
		segs = append(segs[:1], segs[2])
		g.free = append(g.free, descs[2])
		descs = descs[:2]
	}
	for i, s := range segs {
		flags, next := s.flags, uint16(0)
		if i < len(segs)-1 {
			flags |= descFNext
			next = descs[i+1]
		}
		d.writeDesc(g.cfg.Desc, descs[i], s.addr, s.n, flags, next)
	}
	g.chains[head] = append([]uint16(nil), descs...)
	done := make(chan byte, 1)
	g.waiting[head] = done
	// virtqueue_add_split: the ring entry, then the index (release);
	// virtqueue_kick_prepare: a full barrier, then avail_event.
	d.put16(g.cfg.Driver+4+2*uint64(g.avail%g.cfg.Size), head)
	old := g.avail
	g.avail++
	g.storeMB(g.cfg.Driver+2, g.avail)
	ae := g.load(g.availEventAddr())
	kick := g.avail-ae-1 < g.avail-old
	if kick {
		g.kicks++
	}
	g.mu.Unlock()
	if kick {
		wr(g.m, RegQueueNotify, 0)
	}
	select {
	case st := <-done:
		var out []byte
		if typ == blkTIn {
			out = make([]byte, len(data))
			g.mem.ReadAt(out, buf+16)
		}
		g.mu.Lock()
		g.free = append(g.free, g.chains[head]...)
		delete(g.chains, head)
		g.room.Broadcast()
		g.mu.Unlock()
		return st, out, nil
	case <-time.After(blkGuestWait):
		return 0, nil, fmt.Errorf("request %d (type %d, sector %d) not completed in %v: %s", head, typ, sector, blkGuestWait, g.state())
	}
}

// state describes the rings.
func (g *blkGuest) state() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return fmt.Sprintf("avail idx %d, used idx %d (guest has seen %d), avail_event %d, used_event %d, interrupt status %#x, device status %#x; %d interrupts (%d without work), %d notifies",
		g.avail, g.load(g.cfg.Device+2), g.lastUsed, g.load(g.availEventAddr()), g.load(g.usedEventAddr()),
		rd(g.m, regInterruptStat), rd(g.m, regStatus), g.irqs, g.spurious, g.kicks)
}

// handleInterrupts is vm_interrupt: read and ACK the status, then
// vring_interrupt and virtblk_done.
func (g *blkGuest) handleInterrupts(stop chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-g.irq:
		}
		st := rd(g.m, regInterruptStat)
		wr(g.m, regInterruptACK, st)
		if st&interruptUsed == 0 {
			continue
		}
		g.mu.Lock()
		g.irqs++
		if g.lastUsed == g.load(g.cfg.Device+2) {
			g.spurious++ // vring_interrupt: no work
			g.mu.Unlock()
			continue
		}
		g.triggered = true
		for {
			g.disableCB()
			for g.getBuf() {
			}
			if g.broken || g.enableCB() {
				break
			}
		}
		g.mu.Unlock()
	}
}

// disableCB is virtqueue_disable_cb_split.
func (g *blkGuest) disableCB() {
	if g.cbOff {
		return
	}
	g.cbOff = true
	if g.triggered {
		return
	}
	if err := g.mem.PutUint16(g.usedEventAddr(), 0); err != nil {
		g.t.Error(err)
	}
}

// getBuf is virtqueue_get_buf_ctx_split: one used entry, if any.
func (g *blkGuest) getBuf() bool {
	if g.lastUsed == g.load(g.cfg.Device+2) {
		return false
	}
	e := g.cfg.Device + 4 + 8*uint64(g.lastUsed%g.cfg.Size)
	id, _ := g.mem.Uint32(e)
	done, ok := g.waiting[uint16(id)]
	if !ok {
		g.t.Errorf("used entry %d names %d, not a request in flight", g.lastUsed, id)
		g.broken = true
		return false
	}
	delete(g.waiting, uint16(id))
	chain := g.chains[uint16(id)]
	var last [16]byte
	g.mem.ReadAt(last[:], g.cfg.Desc+16*uint64(chain[len(chain)-1]))
	var status [1]byte
	g.mem.ReadAt(status[:], binary.LittleEndian.Uint64(last[0:]))
	done <- status[0]
	g.lastUsed++
	if !g.cbOff {
		g.storeMB(g.usedEventAddr(), g.lastUsed)
	}
	return true
}

// enableCB is virtqueue_enable_cb: used_event at the last entry seen,
// a full barrier, and whether nothing more was used meanwhile.
func (g *blkGuest) enableCB() bool {
	g.cbOff, g.triggered = false, false
	g.storeMB(g.usedEventAddr(), g.lastUsed)
	return g.lastUsed == g.load(g.cfg.Device+2)
}

// TestBlockInterruptDriven runs a Linux-like guest (blkGuest) with
// several submitters writing and reading back their own sectors, each
// request bounded in time, from index 0 and across the split ring's
// 16-bit index wrap (65535 -> 0).
func TestBlockInterruptDriven(t *testing.T) {
	for _, tc := range []struct {
		name     string
		start    uint16
		requests int // per submitter
	}{
		{"from 0", 0, 200},
		{"across the index wrap", 65536 - 700, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newBlkGuest(t, tc.start)
			const submitters = 8
			var wg sync.WaitGroup
			errs := make(chan error, submitters)
			for s := 0; s < submitters; s++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(s), 1))
					for i := 0; i < tc.requests; i++ {
						sector := uint64(s*64 + rng.IntN(56))
						n := 512 * (1 + rng.IntN(8))
						data := bytes.Repeat([]byte{byte(s), byte(i), byte(i >> 8), 0x5a}, n/4)
						if st, _, err := g.request(blkTOut, sector, data); err != nil || st != blkSOK {
							errs <- fmt.Errorf("submitter %d: write %d: status %d, %v", s, i, st, err)
							return
						}
						st, got, err := g.request(blkTIn, sector, make([]byte, n))
						if err != nil || st != blkSOK || !bytes.Equal(got, data) {
							errs <- fmt.Errorf("submitter %d: read %d: status %d, same data %v, %v", s, i, st, bytes.Equal(got, data), err)
							return
						}
						if i%16 == 0 {
							if st, _, err := g.request(blkTFlush, 0, nil); err != nil || st != blkSOK {
								errs <- fmt.Errorf("submitter %d: flush %d: status %d, %v", s, i, st, err)
								return
							}
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			t.Logf("%s", g.state())
		})
	}
}
