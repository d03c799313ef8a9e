package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Network feature bits (virtio 1.2 §5.1.3).
const (
	NetFCsum      = 1 << 0  // VIRTIO_NET_F_CSUM: the device takes partial checksums
	NetFGuestCsum = 1 << 1  // VIRTIO_NET_F_GUEST_CSUM: the driver takes partial checksums
	NetFMAC       = 1 << 5  // VIRTIO_NET_F_MAC
	NetFGuestTSO4 = 1 << 7  // VIRTIO_NET_F_GUEST_TSO4
	NetFGuestTSO6 = 1 << 8  // VIRTIO_NET_F_GUEST_TSO6
	NetFHostTSO4  = 1 << 11 // VIRTIO_NET_F_HOST_TSO4
	NetFHostTSO6  = 1 << 12 // VIRTIO_NET_F_HOST_TSO6
	NetFMrgRxBuf  = 1 << 15 // VIRTIO_NET_F_MRG_RXBUF
	NetFStatus    = 1 << 16 // VIRTIO_NET_F_STATUS
)

// NetOffloads are the offload features offered when the backend passes
// virtio-net headers through (a TAP device with IFF_VNET_HDR): the host
// kernel then finishes checksums and segments large packets either way.
const NetOffloads = NetFCsum | NetFGuestCsum | NetFGuestTSO4 | NetFGuestTSO6 | NetFHostTSO4 | NetFHostTSO6

// NetHdrSize is the size of struct virtio_net_hdr_v1 (virtio 1.2 §5.1.6),
// which leads every packet both ways: with VIRTIO_F_VERSION_1 it always
// has the num_buffers field.
const NetHdrSize = 12

const (
	netQueueSize  = 256
	netStatusUp   = 1 // VIRTIO_NET_S_LINK_UP
	netHdrNumBufs = 10
	netHdrFlags   = 0
	netHdrGSOType = 1
	// netMaxFrame bounds one packet with its header: a 64 KiB GSO packet,
	// its Ethernet and VLAN headers.
	netMaxFrame = NetHdrSize + 65535 + 14 + 4
	// VIRTIO_NET_HDR_F_NEEDS_CSUM and VIRTIO_NET_HDR_GSO_NONE.
	netHdrNeedsCsum = 1
	netGSONone      = 0
)

// NetBackend carries Ethernet frames between a virtio-net device and the
// host: a TAP device (devices/tap) or a userspace network
// (devices/usernet).
type NetBackend interface {
	// VnetHdr reports whether frames both ways begin with a
	// virtio_net_hdr_v1 of NetHdrSize bytes (a TAP device with
	// IFF_VNET_HDR). Then the device offers NetOffloads; otherwise frames
	// are bare Ethernet and the guest does its own checksums.
	VnetHdr() bool
	// SetOffloads tells a VnetHdr backend which offloads the driver
	// accepted for received packets (NetFGuestCsum, NetFGuestTSO4,
	// NetFGuestTSO6 of the negotiated features), so that it never hands
	// the device a packet the driver cannot take.
	SetOffloads(features uint64) error
	// ReadFrame reads one frame into b, blocking until one arrives or
	// the read deadline passes (an error wrapping os.ErrDeadlineExceeded).
	ReadFrame(b []byte) (int, error)
	// WriteFrame sends one frame made of bufs; it blocks at most until
	// the write deadline.
	WriteFrame(bufs [][]byte) error
	// SetDeadline sets the read and write deadlines; a zero time clears
	// them. The device uses it to interrupt blocked calls on reset.
	SetDeadline(t time.Time) error
}

// NetTryReader is an optional interface of a NetBackend: a read that
// does not wait. With it the device takes every frame already waiting
// (up to netRxBatch) before it interrupts the driver once for all of
// them, as a NIC coalesces receive interrupts, instead of once a frame.
type NetTryReader interface {
	// TryReadFrame reads one frame into b if one is waiting: ok is false
	// when none is. A passed read deadline is an error, as for ReadFrame.
	TryReadFrame(b []byte) (n int, ok bool, err error)
}

// TryRead reads once from a non-blocking descriptor of Go's poller
// without waiting, for a NetBackend's TryReadFrame: ok is false when
// nothing is there (EAGAIN, or a read interrupted by a signal).
func TryRead(c syscall.Conn, b []byte) (n int, ok bool, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false, err
	}
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), b)
		return true // never wait
	}); err != nil {
		return 0, false, err
	}
	switch {
	case rerr == unix.EAGAIN || rerr == unix.EINTR:
		return 0, false, nil
	case rerr != nil:
		return 0, false, rerr
	}
	return n, true, nil
}

// netRxBatch bounds how many received frames wait for one interrupt, so
// that a steady stream still reaches the driver in bounded time.
const netRxBatch = 64

// ErrNetDown is returned by a backend's WriteFrame while the host side of
// the link is down (a TAP interface not up): the frame is dropped, as on
// an unplugged cable, without a log line.
var ErrNetDown = errors.New("virtio net: host link down")

// Net is virtio-net (virtio 1.2 §5.1) with one receive and one transmit
// queue and no control queue. Packets go to and from a NetBackend; with a
// TAP backend the virtio-net header passes through unchanged, so
// checksum and segmentation offloads reach the host kernel, and
// VIRTIO_NET_F_MRG_RXBUF lets a 64 KiB packet span the driver's receive
// buffers.
type Net struct {
	be     NetBackend
	config [8]byte
	logf   func(string, ...any)

	mu  sync.Mutex
	run *netRun

	// Counters over the device's life, for metrics.
	rxPackets, rxBytes, rxDropped, rxMax atomic.Uint64
	txPackets, txBytes, txDropped, txMax atomic.Uint64
}

// NewNet returns a network device with hardware address mac (6 bytes)
// over be. logf, if not nil, receives a line per unusual event,
// rate-limited.
func NewNet(be NetBackend, mac net.HardwareAddr, logf func(string, ...any)) (*Net, error) {
	if len(mac) != 6 {
		return nil, fmt.Errorf("virtio net: MAC address %q is not 6 bytes", mac)
	}
	if mac[0]&1 != 0 {
		return nil, fmt.Errorf("virtio net: MAC address %s is a multicast address", mac)
	}
	n := &Net{be: be, logf: logf}
	copy(n.config[:6], mac)
	binary.LittleEndian.PutUint16(n.config[6:], netStatusUp)
	return n, nil
}

// Type implements Device: virtio-net is device ID 1.
func (n *Net) Type() uint32 { return TypeNet }

// Features implements Device (virtio 1.2 §5.1.3).
func (n *Net) Features() uint64 {
	f := uint64(NetFMAC | NetFStatus | NetFMrgRxBuf)
	if n.be.VnetHdr() {
		f |= NetOffloads
	}
	return f
}

// QueueMaxSizes implements Device: receiveq1 and transmitq1 (virtio 1.2
// §5.1.2).
func (n *Net) QueueMaxSizes() []uint16 { return []uint16{netQueueSize, netQueueSize} }

// ReadConfig implements Device: mac and status of struct
// virtio_net_config (virtio 1.2 §5.1.4).
func (n *Net) ReadConfig(off uint64, data []byte) {
	if off < uint64(len(n.config)) {
		copy(data, n.config[off:])
	}
}

// WriteConfig implements Device: the driver writes nothing (MAC is
// offered, and VIRTIO_NET_F_CTRL_MAC_ADDR is not).
func (n *Net) WriteConfig(uint64, []byte) {}

// NetStats are a network device's counters.
type NetStats struct {
	// host -> guest
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	RxDropped uint64 `json:"rx_dropped"`
	RxMax     uint64 `json:"rx_max"` // the largest packet: above a frame's 1514 bytes only with offloads
	// guest -> host
	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
	TxDropped uint64 `json:"tx_dropped"`
	TxMax     uint64 `json:"tx_max"`
}

// Stats returns the device's counters since it was made.
func (n *Net) Stats() NetStats {
	return NetStats{
		RxPackets: n.rxPackets.Load(), RxBytes: n.rxBytes.Load(), RxDropped: n.rxDropped.Load(), RxMax: n.rxMax.Load(),
		TxPackets: n.txPackets.Load(), TxBytes: n.txBytes.Load(), TxDropped: n.txDropped.Load(), TxMax: n.txMax.Load(),
	}
}

// Activate implements Device.
func (n *Net) Activate(q *Queues) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(q.Queues) != 2 || len(q.Notify) != 2 {
		return fmt.Errorf("virtio net: %d queues and %d notifiers, want 2", len(q.Queues), len(q.Notify))
	}
	if n.run != nil {
		return errors.New("virtio net: activated twice without a reset")
	}
	if n.be.VnetHdr() {
		if err := n.be.SetOffloads(q.Features); err != nil {
			return fmt.Errorf("virtio net: %w", err)
		}
	}
	if err := n.be.SetDeadline(time.Time{}); err != nil {
		return fmt.Errorf("virtio net: %w", err)
	}
	r := &netRun{n: n, q: q, mrg: q.Features&NetFMrgRxBuf != 0, vnet: n.be.VnetHdr()}
	r.w = &workers{q: q}
	r.w.serve(1, r.handleTX)
	r.wg.Add(1)
	go r.rxLoop()
	n.run = r
	return nil
}

// Reset implements Device: the receive loop and the transmit worker stop
// (blocked backend calls are cut short by a deadline in the past); a
// packet in flight is dropped.
func (n *Net) Reset() {
	n.mu.Lock()
	r := n.run
	n.run = nil
	n.mu.Unlock()
	if r == nil {
		return
	}
	r.stop.Store(true)
	n.be.SetDeadline(time.Unix(1, 0))
	r.w.shutdown() // also signals the receive queue's notifier
	r.wg.Wait()
}

// netRun is one activation of the device.
type netRun struct {
	n    *Net
	q    *Queues
	w    *workers
	mrg  bool // VIRTIO_NET_F_MRG_RXBUF negotiated
	vnet bool // the backend's frames carry the virtio-net header
	stop atomic.Bool
	wg   sync.WaitGroup
	warn atomic.Int32
	// unsignalled: receive buffers were used since the driver was last
	// interrupted for them (only the receive loop touches it).
	unsignalled bool
}

// log reports an unusual event, at most 10 times per activation.
func (r *netRun) log(format string, a ...any) {
	if r.n.logf == nil {
		return
	}
	switch k := r.warn.Add(1); {
	case k < 10:
		r.n.logf("virtio net: "+format, a...)
	case k == 10:
		r.n.logf("virtio net: "+format+" (further messages suppressed)", a...)
	}
}

// rxLoop moves frames from the backend into the driver's receive buffers
// (virtio 1.2 §5.1.6.3). While the driver has no buffers it stops reading,
// so the backend's own queue fills and drops, as a real NIC's would.
func (r *netRun) rxLoop() {
	defer r.wg.Done()
	buf := make([]byte, netMaxFrame)
	off := 0
	if !r.vnet {
		off = NetHdrSize // a bare frame gets a zeroed header in front
	}
	try, _ := r.n.be.(NetTryReader)
	var spare []*Chain // popped, not used yet
	batch := 0         // frames read since the driver was last interrupted
	for !r.stop.Load() {
		var (
			k   int
			got bool
			err error
		)
		if try != nil && batch > 0 && batch < netRxBatch {
			k, got, err = try.TryReadFrame(buf[off:])
		}
		if err == nil && !got {
			// Nothing more waiting: the driver hears of what it got
			// before the device blocks.
			r.flush()
			batch = 0
			k, err = r.n.be.ReadFrame(buf[off:])
		}
		if err != nil {
			if r.stop.Load() {
				return
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue // a reset that was undone meanwhile
			}
			r.flush()
			r.log("receive: backend: %v; the link is down", err)
			return
		}
		batch++
		frame := buf[:off+k]
		if len(frame) < NetHdrSize {
			r.n.rxDropped.Add(1)
			continue
		}
		if !r.vnet {
			clear(frame[:NetHdrSize])
		}
		spare, err = r.deliver(frame, spare)
		if errors.Is(err, errNetStopped) {
			return
		}
		if err != nil {
			r.q.Fail(err)
			return
		}
	}
}

// flush interrupts the driver, if its rules ask for it (virtio 1.2
// §2.7.10), for the receive buffers used since the last flush.
func (r *netRun) flush() {
	if r.unsignalled {
		r.unsignalled = false
		r.q.UsedBuffers(0)
	}
}

// deliver writes one frame (header included) into receive buffers,
// waiting for the driver to add some if needed. It returns the chains it
// popped but did not use.
func (r *netRun) deliver(frame []byte, spare []*Chain) ([]*Chain, error) {
	q := r.q.Queues[0]
	// Gather enough buffers: one chain without MRG_RXBUF, as many as the
	// frame needs with it.
	var room uint64
	for _, c := range spare {
		room += c.WritableLen()
	}
	for !r.enough(spare, room, len(frame)) {
		if len(spare) > 0 && !r.mrg {
			// The driver's buffer is too small for this frame (it did
			// not negotiate large receives): drop the frame, keep the
			// buffer for the next.
			r.n.rxDropped.Add(1)
			return spare, nil
		}
		c, again, err := q.PopOrArm()
		if err != nil {
			return nil, err
		}
		if c == nil {
			if !again && r.mrg && heldDescs(spare) >= int(q.Size()) {
				// Every descriptor of the queue is in our hands and
				// still the frame does not fit: the driver can add
				// nothing more, so waiting would wedge the receive
				// queue for good. Drop the frame and give the
				// buffers back unused, so the driver can post
				// bigger ones.
				r.n.rxDropped.Add(1)
				r.log("dropping a %d-byte frame: the driver's %d receive buffers hold only %d bytes", len(frame)-NetHdrSize, len(spare), room)
				for _, c := range spare {
					if err := q.Push(c.Head, 0); err != nil {
						return nil, err
					}
				}
				r.unsignalled = true
				return spare[:0], nil
			}
			if !again {
				// The driver refills from what it was given: it must
				// hear of it before the device waits for more.
				r.flush()
				if _, err := r.q.Notify[0].Wait(); err != nil || r.stop.Load() {
					return nil, errNetStopped
				}
			}
			continue
		}
		if c.WritableLen() < NetHdrSize {
			return nil, fmt.Errorf("%w: net receive buffer %d has %d writable bytes, less than the header", ErrQueue, c.Head, c.WritableLen())
		}
		spare = append(spare, c)
		room += c.WritableLen()
	}

	used := 0
	if r.mrg {
		for rest := uint64(len(frame)); rest > 0; used++ {
			rest -= min(rest, spare[used].WritableLen())
		}
	} else {
		used = 1
	}
	binary.LittleEndian.PutUint16(frame[netHdrNumBufs:], uint16(used))
	rest := frame
	for _, c := range spare[:used] {
		w := c.Writer()
		k := min(uint64(len(rest)), w.Remaining())
		if _, err := w.Write(rest[:k]); err != nil {
			return nil, err
		}
		rest = rest[k:]
		if err := q.Push(c.Head, w.Written()); err != nil {
			return nil, err
		}
	}
	r.unsignalled = true
	r.n.rxPackets.Add(1)
	r.n.rxBytes.Add(uint64(len(frame) - NetHdrSize))
	storeMax(&r.n.rxMax, uint64(len(frame)-NetHdrSize))
	return append(spare[:0], spare[used:]...), nil
}

// heldDescs counts the descriptors of the popped chains. It is exact for
// direct chains; an indirect chain occupies one descriptor of the queue
// but counts its table's entries, so it errs towards "the driver can add
// no more".
func heldDescs(spare []*Chain) int {
	n := 0
	for _, c := range spare {
		n += len(c.Descs)
	}
	return n
}

// errNetStopped ends the receive loop on reset.
var errNetStopped = errors.New("virtio net: stopped")

// enough reports whether the popped chains can take a frame of n bytes.
func (r *netRun) enough(spare []*Chain, room uint64, n int) bool {
	if r.mrg {
		return room >= uint64(n)
	}
	return len(spare) > 0 && spare[0].WritableLen() >= uint64(n)
}

// handleTX sends one packet from the driver (virtio 1.2 §5.1.6.2). A
// chain shorter than the header is a driver error; a packet the backend
// refuses is dropped and counted.
func (r *netRun) handleTX(c *Chain) (uint32, error) {
	rd := c.Reader()
	total := rd.Remaining()
	if total < NetHdrSize {
		return 0, fmt.Errorf("%w: net transmit chain %d has %d readable bytes, less than the header", ErrQueue, c.Head, total)
	}
	if total > netMaxFrame {
		r.n.txDropped.Add(1)
		r.log("dropping a %d-byte packet, larger than %d", total, netMaxFrame)
		return 0, nil
	}
	bufs, err := rd.Buffers(total)
	if err != nil {
		return 0, err
	}
	if !r.vnet {
		var hdr [NetHdrSize]byte
		copyFrom(hdr[:], bufs)
		if hdr[netHdrFlags]&netHdrNeedsCsum != 0 || hdr[netHdrGSOType] != netGSONone {
			// Offloads were not offered: a driver asking for them
			// breaks the rules; the packet cannot go out as it is.
			r.n.txDropped.Add(1)
			r.log("dropping a packet that asks for an offload the device did not offer")
			return 0, nil
		}
		bufs = advance(bufs, NetHdrSize)
	}
	if err := r.n.be.WriteFrame(bufs); err != nil {
		if r.stop.Load() {
			return 0, nil
		}
		r.n.txDropped.Add(1)
		if !errors.Is(err, ErrNetDown) {
			r.log("transmit: backend: %v", err)
		}
		return 0, nil
	}
	r.n.txPackets.Add(1)
	r.n.txBytes.Add(total - NetHdrSize)
	storeMax(&r.n.txMax, total-NetHdrSize)
	return 0, nil
}

// storeMax raises m to v if v is larger.
func storeMax(m *atomic.Uint64, v uint64) {
	for {
		old := m.Load()
		if v <= old || m.CompareAndSwap(old, v) {
			return
		}
	}
}

// copyFrom fills dst from the start of bufs.
func copyFrom(dst []byte, bufs [][]byte) {
	for _, b := range bufs {
		if len(dst) == 0 {
			return
		}
		dst = dst[copy(dst, b):]
	}
}
