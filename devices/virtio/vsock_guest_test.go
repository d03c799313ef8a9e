package virtio

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/vesselvm/vessel/devices"
	"github.com/vesselvm/vessel/guestmem"
)

// Test guest layout for vsock: three queues of 16 descriptors, RX buffers
// of one header and 4 KiB (one descriptor, or two with rxSplit, like older
// Linux), TX slots of up to four descriptors.
const (
	vsTestCID    = 3
	vsRAM        = 4 << 20
	vsQSize      = 16
	vsRxBase     = 0x10000
	vsRxStride   = 0x2000
	vsRxData     = 4096
	vsEvBase     = 0x40000
	vsTxBase     = 0x100000
	vsTxStride   = 0x11000
	vsTxSlots    = 4
	vsTxSlotDesc = 4
)

// vsGuest plays the guest's virtio-vsock driver over the MMIO transport.
type vsGuest struct {
	t      testing.TB
	m      *MMIO
	mem    *guestmem.Memory
	dev    *Vsock
	uds    string
	irq    *devices.CountingInterrupt
	log    *logRecorder
	rx     *driver
	tx     *driver
	ev     *driver
	split  bool   // RX buffers as header + data descriptors
	rxSeen uint16 // used RX entries consumed
	txSent uint16 // TX chains offered
}

type vsOpts struct {
	split    bool
	eventIdx bool
	noInit   bool   // create the device but do not start the driver
	onIRQ    func() // called at each interrupt the device raises
}

func newVsGuest(t testing.TB, o vsOpts) *vsGuest {
	t.Helper()
	mem, err := guestmem.New([]guestmem.RegionSpec{{GPA: 0, Size: vsRAM}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	uds := filepath.Join(t.TempDir(), "v.sock")
	log := &logRecorder{}
	logf := func(format string, a ...any) {
		log.logf(format, a...)
		t.Logf(format, a...)
	}
	dev, err := NewVsock(vsTestCID, uds, logf)
	if err != nil {
		t.Fatal(err)
	}
	irq := &devices.CountingInterrupt{}
	var line devices.Interrupt = irq
	if o.onIRQ != nil {
		line = devices.InterruptFunc(func() error {
			o.onIRQ()
			return irq.Trigger()
		})
	}
	m, err := NewMMIO(dev, mem, line, logf)
	if err != nil {
		dev.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Close()
		dev.Close()
	})
	g := &vsGuest{t: t, m: m, mem: mem, dev: dev, uds: uds, irq: irq, log: log, split: o.split}
	if !o.noInit {
		g.init(o.eventIdx)
	}
	return g
}

func vsDriver(t testing.TB, mem *guestmem.Memory, i int) *driver {
	base := uint64(0x1000 * (i + 1))
	return &driver{t: t, mem: mem, cfg: QueueConfig{Size: vsQSize, Desc: base, Driver: base + 0x400, Device: base + 0x800}}
}

// init runs the driver initialisation (virtio 1.2 §3.1.1) for the three
// queues, then fills the RX and event queues.
func (g *vsGuest) init(eventIdx bool) {
	g.t.Helper()
	m := g.m
	wr(m, regStatus, 0)
	for i := uint64(0x1000); i < 0x4000; i += 8 {
		g.mem.PutUint64(i, 0) // fresh rings
	}
	g.rx, g.tx, g.ev = vsDriver(g.t, g.mem, 0), vsDriver(g.t, g.mem, 1), vsDriver(g.t, g.mem, 2)
	g.rxSeen, g.txSent = 0, 0
	features := uint64(0)
	if eventIdx {
		features |= FeatureEventIdx
	}
	startDriver(g.t, m, features, g.rx, g.tx, g.ev)
	for i := uint16(0); i < g.rxSlots(); i++ {
		g.offerRX(i)
	}
	wr(m, RegQueueNotify, 0)
	for i := uint16(0); i < 4; i++ {
		g.ev.writeDesc(g.ev.cfg.Desc, i, vsEvBase+uint64(i)*16, 8, descFWrite, 0)
		g.ev.offer(i)
	}
	wr(m, RegQueueNotify, 2)
}

func (g *vsGuest) rxSlots() uint16 {
	if g.split {
		return vsQSize / 2
	}
	return vsQSize
}

// offerRX (re)offers RX slot i.
func (g *vsGuest) offerRX(i uint16) {
	addr := vsRxBase + uint64(i)*vsRxStride
	if g.split {
		g.rx.writeDesc(g.rx.cfg.Desc, 2*i, addr, vsockHdrSize, descFWrite|descFNext, 2*i+1)
		g.rx.writeDesc(g.rx.cfg.Desc, 2*i+1, addr+64, vsRxData, descFWrite, 0)
		g.rx.offer(2 * i)
		return
	}
	g.rx.writeDesc(g.rx.cfg.Desc, i, addr, vsockHdrSize+vsRxData, descFWrite, 0)
	g.rx.offer(i)
}

// poll returns the next packet the device sent, if any, and gives its
// buffer back.
func (g *vsGuest) poll() (vsockHdr, []byte, bool) {
	var h vsockHdr
	if g.rx.usedIdx() == g.rxSeen {
		return h, nil, false
	}
	id, n := g.rx.used(g.rxSeen)
	g.rxSeen++
	slot := uint16(id)
	if g.split {
		slot /= 2
	}
	addr := vsRxBase + uint64(slot)*vsRxStride
	var b [vsockHdrSize]byte
	g.mem.ReadAt(b[:], addr)
	h.decode(b[:])
	if h.len > vsRxData || n != vsockHdrSize+h.len {
		g.t.Fatalf("rx packet op %d: len %d, used length %d", h.op, h.len, n)
	}
	data := make([]byte, h.len)
	if g.split {
		g.mem.ReadAt(data, addr+64)
	} else {
		g.mem.ReadAt(data, addr+vsockHdrSize)
	}
	g.offerRX(slot)
	wr(g.m, RegQueueNotify, 0)
	return h, data, true
}

// recv waits for the next packet.
func (g *vsGuest) recv() (vsockHdr, []byte) {
	g.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if h, d, ok := g.poll(); ok {
			return h, d
		}
		if time.Now().After(deadline) {
			g.t.Fatal("timed out waiting for an rx packet")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// recvOp waits for the next packet and checks its op.
func (g *vsGuest) recvOp(op uint16) (vsockHdr, []byte) {
	g.t.Helper()
	h, d := g.recv()
	if h.op != op {
		g.t.Fatalf("got op %d (%+v), want op %d", h.op, h, op)
	}
	return h, d
}

// quiet checks that the device sends nothing for a while.
func (g *vsGuest) quiet(d time.Duration) {
	g.t.Helper()
	time.Sleep(d)
	if h, _, ok := g.poll(); ok {
		g.t.Fatalf("unexpected packet %+v", h)
	}
}

// sendChain offers a TX chain of up to four device-readable parts.
func (g *vsGuest) sendChain(parts ...[]byte) {
	g.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for g.txSent-g.tx.usedIdx() >= vsTxSlots {
		if time.Now().After(deadline) {
			g.t.Fatal("timed out waiting for a tx slot")
		}
		time.Sleep(50 * time.Microsecond)
	}
	slot := g.txSent % vsTxSlots
	addr := vsTxBase + uint64(slot)*vsTxStride
	first := slot * vsTxSlotDesc
	for i, p := range parts {
		g.mem.WriteAt(p, addr)
		var flags uint16
		if i < len(parts)-1 {
			flags = descFNext
		}
		d := first + uint16(i)
		g.tx.writeDesc(g.tx.cfg.Desc, d, addr, uint32(len(p)), flags, d+1)
		addr += uint64(len(p)+63) &^ 63
	}
	g.tx.offer(first)
	g.txSent++
	wr(g.m, RegQueueNotify, 1)
}

// send sends a packet: header and payload in separate descriptors, or in
// one when payload is empty.
func (g *vsGuest) send(h vsockHdr, payload []byte) {
	g.t.Helper()
	h.len = uint32(len(payload))
	b := make([]byte, vsockHdrSize)
	h.encode(b)
	if len(payload) == 0 {
		g.sendChain(b)
		return
	}
	g.sendChain(b, payload)
}

// flushTX waits until the device has consumed every TX chain.
func (g *vsGuest) flushTX() {
	g.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for g.tx.usedIdx() != g.txSent {
		if time.Now().After(deadline) {
			g.t.Fatal("timed out waiting for the device to take tx chains")
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// pkt returns a header from the guest's port gp to the host's port hp.
func pkt(op uint16, gp, hp uint32) vsockHdr {
	return vsockHdr{srcCID: vsTestCID, dstCID: vsockHostCID, srcPort: gp, dstPort: hp, typ: vsockTypeStream, op: op, bufAlloc: 1 << 20}
}

// needsReset reports whether the transport has DEVICE_NEEDS_RESET.
func (g *vsGuest) needsReset() bool { return g.m.Status()&StatusNeedsReset != 0 }

// conns returns how many connections the active device holds.
func (g *vsGuest) conns() int {
	g.dev.mu.Lock()
	r := g.dev.run
	g.dev.mu.Unlock()
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

// dialHost connects a host client to the device's socket and asks for
// guest port port.
func (g *vsGuest) dialHost(port uint32) *net.UnixConn {
	g.t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: g.uds, Net: "unix"})
	if err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte("CONNECT " + itoa(port) + "\n")); err != nil {
		g.t.Fatal(err)
	}
	return c
}

func itoa(v uint32) string {
	var b [10]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		if v /= 10; v == 0 {
			return string(b[i:])
		}
	}
}

// hostListen listens on <uds>_port, as a host service for guest-initiated
// connections.
func (g *vsGuest) hostListen(port uint32) *net.UnixListener {
	g.t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: g.uds + "_" + itoa(port), Net: "unix"})
	if err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { ln.Close() })
	return ln
}
