package virtio

import (
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"net"
	"sync"
	"testing"
	"time"
)

// irqDriver drives a vsGuest's RX and TX queues as Linux's virtio_ring and
// virtio_transport do with VIRTIO_F_EVENT_IDX: it looks at a used ring
// only after an interrupt (then re-arms used_event and looks once more),
// notifies a queue only when avail_event asks for it, gives RX buffers
// back once half of them are used, and sends TX packets only into free
// slots, reclaimed on interrupts. A device that loses a wake-up anywhere
// leaves it waiting for an interrupt that never comes.
type irqDriver struct {
	t      *testing.T
	g      *vsGuest
	irq    chan struct{}
	rxIdle []uint16 // consumed RX slots not offered again yet
	rxOut  int      // RX buffers the device holds
	txFree []uint16 // free TX slots
	txLast uint16   // used TX entries reclaimed
	txHead map[uint16]uint16
	queue  []irqPkt // packets waiting for a TX slot
	irqs   int
}

type irqPkt struct {
	h       vsockHdr
	payload []byte
}

// TX slots: two descriptors each (header, payload), as Linux sends.
const (
	irqTxSlots  = vsQSize / 2
	irqTxBase   = 0x100000
	irqTxStride = 0x11000
)

func newIRQDriver(t *testing.T) *irqDriver {
	d := &irqDriver{t: t, irq: make(chan struct{}, 1), txHead: map[uint16]uint16{}}
	d.g = newVsGuest(t, vsOpts{eventIdx: true, onIRQ: func() {
		select {
		case d.irq <- struct{}{}:
		default:
		}
	}})
	d.rxOut = int(d.g.rxSlots())
	for i := uint16(0); i < irqTxSlots; i++ {
		d.txFree = append(d.txFree, i)
	}
	return d
}

// offer makes head available with a locked store of the index (a full
// barrier, as virtio_mb before the driver reads avail_event).
func (d *irqDriver) offer(q *driver, head uint16) {
	q.put16(q.cfg.Driver+4+2*uint64(q.avail%q.cfg.Size), head)
	q.avail++
	if err := d.g.mem.StoreUint16(q.cfg.Driver+2, q.avail); err != nil {
		d.t.Fatal(err)
	}
}

// kick notifies queue qi if the device's avail_event lies in the entries
// made available since old (vring_need_event).
func (d *irqDriver) kick(q *driver, qi int, old uint16) {
	ae, err := d.g.mem.LoadUint16(q.cfg.Device + 4 + 8*uint64(q.cfg.Size))
	if err != nil {
		d.t.Fatal(err)
	}
	if q.avail-ae-1 < q.avail-old {
		wr(d.g.m, RegQueueNotify, uint32(qi))
	}
}

// setUsedEvent asks for an interrupt once the device uses entry idx.
func (d *irqDriver) setUsedEvent(q *driver, idx uint16) {
	if err := d.g.mem.StoreUint16(q.cfg.Driver+4+2*uint64(q.cfg.Size), idx); err != nil {
		d.t.Fatal(err)
	}
}

func (d *irqDriver) send(h vsockHdr, payload []byte) {
	h.len = uint32(len(payload))
	d.queue = append(d.queue, irqPkt{h, payload})
}

// flushTX puts queued packets into free TX slots and notifies as asked.
func (d *irqDriver) flushTX() {
	q := d.g.tx
	old := q.avail
	for len(d.queue) > 0 && len(d.txFree) > 0 {
		p := d.queue[0]
		d.queue = d.queue[1:]
		slot := d.txFree[len(d.txFree)-1]
		d.txFree = d.txFree[:len(d.txFree)-1]
		addr := irqTxBase + uint64(slot)*irqTxStride
		b := make([]byte, vsockHdrSize)
		p.h.encode(b)
		d.g.mem.WriteAt(b, addr)
		first := 2 * slot
		if len(p.payload) == 0 {
			q.writeDesc(q.cfg.Desc, first, addr, vsockHdrSize, 0, 0)
		} else {
			d.g.mem.WriteAt(p.payload, addr+64)
			q.writeDesc(q.cfg.Desc, first, addr, vsockHdrSize, descFNext, first+1)
			q.writeDesc(q.cfg.Desc, first+1, addr+64, uint32(len(p.payload)), 0, 0)
		}
		d.txHead[first] = slot
		d.offer(q, first)
	}
	if q.avail != old {
		d.kick(q, 1, old)
	}
}

// rxPacket reads used RX entry i.
func (d *irqDriver) rxPacket(i uint16) (vsockHdr, []byte, uint16) {
	id, n := d.g.rx.used(i)
	slot := uint16(id)
	addr := vsRxBase + uint64(slot)*vsRxStride
	var b [vsockHdrSize]byte
	d.g.mem.ReadAt(b[:], addr)
	var h vsockHdr
	h.decode(b[:])
	if h.len > vsRxData || n != vsockHdrSize+h.len {
		d.t.Fatalf("rx packet op %d: len %d, used length %d", h.op, h.len, n)
	}
	data := make([]byte, h.len)
	d.g.mem.ReadAt(data, addr+vsockHdrSize)
	return h, data, slot
}

// interrupt handles one interrupt: RX packets to s, TX reclaim.
func (d *irqDriver) interrupt(s *streamGuest) (finished int) {
	g := d.g
	// virtio_mmio's vm_interrupt: read and acknowledge the status, and
	// look at the queues only if it says they were used.
	st := rd(g.m, regInterruptStat)
	wr(g.m, regInterruptACK, st)
	if st&interruptUsed == 0 {
		return 0
	}
	for {
		for g.rx.usedIdx() != g.rxSeen {
			h, data, slot := d.rxPacket(g.rxSeen)
			g.rxSeen++
			d.rxOut--
			d.rxIdle = append(d.rxIdle, slot)
			if s.packet(h, data) {
				finished++
			}
		}
		d.setUsedEvent(g.rx, g.rxSeen)
		if g.rx.usedIdx() == g.rxSeen {
			break
		}
	}
	if d.rxOut < int(g.rxSlots())/2 {
		old := g.rx.avail
		for _, slot := range d.rxIdle {
			addr := vsRxBase + uint64(slot)*vsRxStride
			g.rx.writeDesc(g.rx.cfg.Desc, slot, addr, vsockHdrSize+vsRxData, descFWrite, 0)
			d.offer(g.rx, slot)
			d.rxOut++
		}
		d.rxIdle = d.rxIdle[:0]
		d.kick(g.rx, 0, old)
	}
	for {
		for g.tx.usedIdx() != d.txLast {
			id, _ := g.tx.used(d.txLast)
			d.txLast++
			d.txFree = append(d.txFree, d.txHead[uint16(id)])
		}
		d.setUsedEvent(g.tx, d.txLast)
		if g.tx.usedIdx() == d.txLast {
			break
		}
	}
	return finished
}

// run plays the guest until s.want connections finished; it fails if no
// interrupt comes for stall while the guest waits for one.
func (d *irqDriver) run(s *streamGuest, stall time.Duration) {
	finished := 0
	deadline := time.Now().Add(60 * time.Second)
	for finished < s.want {
		for _, c := range s.conns {
			s.push(c)
		}
		d.flushTX()
		select {
		case <-d.irq:
			d.irqs++
		case <-time.After(stall):
			d.t.Fatalf("stalled: no interrupt for %v with %d of %d connections finished; %s", stall, finished, s.want, d.state(s))
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("streams did not finish: %d of %d; %s", finished, s.want, d.state(s))
		}
		finished += d.interrupt(s)
	}
}

func (d *irqDriver) state(s *streamGuest) string {
	g := d.g
	aeRX, _ := g.mem.LoadUint16(g.rx.cfg.Device + 4 + 8*uint64(g.rx.cfg.Size))
	aeTX, _ := g.mem.LoadUint16(g.tx.cfg.Device + 4 + 8*uint64(g.tx.cfg.Size))
	st := fmt.Sprintf("rx: avail %d used %d seen %d avail_event %d, %d held by the device; tx: avail %d used %d avail_event %d, %d queued; %d interrupts",
		g.rx.avail, g.rx.usedIdx(), g.rxSeen, aeRX, d.rxOut, g.tx.avail, g.tx.usedIdx(), aeTX, len(d.queue), d.irqs)
	for _, c := range s.conns {
		st += fmt.Sprintf("\n  conn %d->%d: open %v done %v rcv %d tx %d peerBuf %d peerFwd %d out %d", c.gp, c.hp, c.open, c.done, c.rcvCnt, c.txCnt, c.peerBuf, c.peerFwd, len(c.out))
	}
	return st
}

// TestVsockInterruptDriven moves data both ways on several connections
// through a guest that, like Linux, waits for interrupts and notifies
// only when the device asks (EVENT_IDX), while one host service never
// reads what its guest connection sends and another reads slowly: the
// others must not stall.
func TestVsockInterruptDriven(t *testing.T) {
	const (
		conns    = 4
		size     = 1 << 20
		guestBuf = 64 << 10
	)
	d := newIRQDriver(t)
	g := d.g
	s := &streamGuest{g: g, t: t, window: guestBuf, sendf: d.send}
	var wg sync.WaitGroup
	errs := make(chan error, 4*conns)

	// Host-initiated: host clients send size bytes and read the echo.
	for i := 0; i < conns; i++ {
		c := g.dialHost(5000)
		data := make([]byte, size)
		rand.New(rand.NewSource(int64(i))).Read(data)
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 3)
			if _, err := io.ReadFull(c, buf); err != nil {
				errs <- err
				return
			}
			line := make([]byte, 0, 16)
			for {
				var b [1]byte
				if _, err := c.Read(b[:]); err != nil {
					errs <- err
					return
				}
				if b[0] == '\n' {
					break
				}
				line = append(line, b[0])
			}
			go c.Write(data)
			got := make([]byte, size)
			if _, err := io.ReadFull(c, got); err != nil {
				errs <- fmt.Errorf("host read: %w", err)
			} else if !bytes.Equal(got, data) {
				errs <- fmt.Errorf("host read different data")
			}
			c.Close()
		}()
	}
	// Guest-initiated: a host echo service, a slow one, and one that
	// never reads.
	echo := g.hostListen(6000)
	slow := g.hostListen(6001)
	deaf := g.hostListen(6002)
	serve := func(ln *net.UnixListener, n int, h func(net.Conn)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				c, err := ln.Accept()
				if err != nil {
					errs <- err
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer c.Close()
					h(c)
				}()
			}
		}()
	}
	serve(echo, conns, func(c net.Conn) { io.Copy(c, c) })
	serve(slow, 1, func(c net.Conn) {
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			time.Sleep(time.Millisecond)
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
	})
	deafDone := make(chan struct{})
	serve(deaf, 1, func(c net.Conn) { <-deafDone })

	for i := 0; i < conns; i++ {
		data := make([]byte, size)
		rand.New(rand.NewSource(int64(100 + i))).Read(data)
		gc := &gconn{gp: uint32(3000 + i), hp: 6000, source: data, out: data}
		s.conns = append(s.conns, gc)
		d.send(s.hdr(gc, vsockOpRequest), nil)
	}
	slowData := make([]byte, 256<<10)
	rand.New(rand.NewSource(200)).Read(slowData)
	s.conns = append(s.conns, &gconn{gp: 4000, hp: 6001, source: slowData, out: slowData})
	d.send(s.hdr(s.conns[len(s.conns)-1], vsockOpRequest), nil)
	deafData := make([]byte, 8<<20) // never read: stalls on credit, alone
	s.conns = append(s.conns, &gconn{gp: 4001, hp: 6002, source: deafData, out: deafData})
	d.send(s.hdr(s.conns[len(s.conns)-1], vsockOpRequest), nil)

	s.want = 2*conns + 1
	d.run(s, 5*time.Second)
	close(deafDone)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if g.needsReset() {
		t.Error("NEEDS_RESET")
	}
	t.Logf("%d interrupts", d.irqs)
}
