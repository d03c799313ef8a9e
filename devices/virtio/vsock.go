package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// virtio-vsock constants (virtio 1.2 §5.10).
const (
	vsockHostCID    = 2  // VMADDR_CID_HOST: the host end of every connection
	vsockHdrSize    = 44 // struct virtio_vsock_hdr
	vsockQueueSize  = 256
	vsockTypeStream = 1 // VIRTIO_VSOCK_TYPE_STREAM

	vsockOpRequest       = 1
	vsockOpResponse      = 2
	vsockOpRST           = 3
	vsockOpShutdown      = 4
	vsockOpRW            = 5
	vsockOpCreditUpdate  = 6
	vsockOpCreditRequest = 7

	vsockShutRCV  = 1 // VIRTIO_VSOCK_SHUTDOWN_RCV: the sender will receive no more
	vsockShutSEND = 2 // VIRTIO_VSOCK_SHUTDOWN_SEND: the sender will send no more
)

// Limits of the host side. A hostile guest can make the device hold at
// most vsockMaxConns connections, each with vsockBufAlloc bytes of
// guest-to-host data and vsockRxBuf bytes of host-to-guest data.
const (
	// vsockBufAlloc is the buf_alloc the device advertises per
	// connection: the guest may have this many bytes in flight towards
	// the host, and the device buffers up to this many per connection
	// while the host socket is slow.
	vsockBufAlloc = 256 << 10
	// vsockCreditThreshold: a CREDIT_UPDATE goes to the guest once this
	// much of the window was forwarded to the host without being
	// reported.
	vsockCreditThreshold = vsockBufAlloc / 4
	// vsockRxBuf is the per-connection staging buffer for host-to-guest
	// data.
	vsockRxBuf = 64 << 10
	// vsockMaxPkt is the largest payload of one packet either way
	// (Linux: VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
	vsockMaxPkt = 64 << 10
	// vsockMaxConns caps the connections of one device.
	vsockMaxConns = 1024
	// vsockMaxPending caps host connections that have not reached the
	// guest yet (reading their CONNECT line, or waiting for the driver).
	vsockMaxPending = 128
	// vsockMaxQueuedRST caps the RST replies to packets for unknown
	// connections that wait for an RX buffer; more are dropped.
	vsockMaxQueuedRST = 256
	// vsockFirstHostPort is where the host-side ports of host-initiated
	// connections start.
	vsockFirstHostPort = 1 << 30
	// vsockConnectTimeout bounds the wait for the guest's answer to a
	// host-initiated REQUEST.
	vsockConnectTimeout = 5 * time.Second
	// vsockCloseTimeout bounds the wait for the guest's RST after the
	// host end closed and the device sent SHUTDOWN.
	vsockCloseTimeout = 2 * time.Second
	// vsockConnectLine bounds the host's "CONNECT <port>\n" line.
	vsockConnectLine = 32
	// vsockMaxIov bounds the iovecs of one direct write to a host socket.
	vsockMaxIov = 64
)

// vsockHdr is struct virtio_vsock_hdr (virtio 1.2 §5.10.6), decoded.
type vsockHdr struct {
	srcCID, dstCID   uint64
	srcPort, dstPort uint32
	len              uint32
	typ, op          uint16
	flags            uint32
	bufAlloc, fwdCnt uint32
}

func (h *vsockHdr) decode(b []byte) {
	le := binary.LittleEndian
	h.srcCID = le.Uint64(b[0:])
	h.dstCID = le.Uint64(b[8:])
	h.srcPort = le.Uint32(b[16:])
	h.dstPort = le.Uint32(b[20:])
	h.len = le.Uint32(b[24:])
	h.typ = le.Uint16(b[28:])
	h.op = le.Uint16(b[30:])
	h.flags = le.Uint32(b[32:])
	h.bufAlloc = le.Uint32(b[36:])
	h.fwdCnt = le.Uint32(b[40:])
}

func (h *vsockHdr) encode(b []byte) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], h.srcCID)
	le.PutUint64(b[8:], h.dstCID)
	le.PutUint32(b[16:], h.srcPort)
	le.PutUint32(b[20:], h.dstPort)
	le.PutUint32(b[24:], h.len)
	le.PutUint16(b[28:], h.typ)
	le.PutUint16(b[30:], h.op)
	le.PutUint32(b[32:], h.flags)
	le.PutUint32(b[36:], h.bufAlloc)
	le.PutUint32(b[40:], h.fwdCnt)
}

// Vsock is virtio-vsock (virtio 1.2 §5.10) with a Firecracker-compatible
// "hybrid vsock" host side: guest AF_VSOCK stream connections are relayed
// to AF_UNIX stream sockets on the host.
//
//   - Host-initiated: a host program connects to the Unix socket uds (which
//     the device listens on for its whole life) and writes "CONNECT
//     <port>\n". The device picks a free host-side port H, asks the guest
//     for a connection from (CID 2, H) to (guest CID, port), and on the
//     guest's RESPONSE answers "OK <H>\n"; from then on the socket carries
//     the stream. If nothing listens on port in the guest, the host
//     connection is closed without an answer.
//   - Guest-initiated: a guest connection to (CID 2, port P) is relayed to
//     a new connection to the Unix socket "<uds>_P"; if that cannot be
//     connected, the guest gets RST.
//
// Data flow is bounded both ways by virtio-vsock credit (virtio 1.2
// §5.10.6, "Buffer Space Management"): the device never sends the guest
// more than the buf_alloc it advertised, and it advertises only what it
// buffers itself, so a slow host socket stalls its own connection and no
// other.
type Vsock struct {
	cid    uint64
	uds    string
	dial   VsockDialer
	logf   func(string, ...any)
	config [8]byte
	ln     *net.UnixListener

	resetMu     sync.Mutex // one Reset at a time, each waiting for the run to stop
	mu          sync.Mutex
	run         *vsockRun // while the driver has the device active
	waiting     []hostConn
	handshaking map[*net.UnixConn]struct{}
	closed      bool
	stopAccept  chan struct{}
	wg          sync.WaitGroup // the accept loop and handshakes
}

// hostConn is a host connection that asked for a guest port and waits for
// the driver to activate the device.
type hostConn struct {
	sock *net.UnixConn
	port uint32
}

// ErrVsockClosed is returned by Activate after Close: the hybrid vsock
// listener is gone, the device cannot serve a driver again.
var ErrVsockClosed = errors.New("virtio vsock: device closed")

// NewVsock returns a vsock device for a guest with context ID guestCID
// (3 or more, below 2^32-1: virtio 1.2 §5.10.4) and starts listening on
// the Unix socket uds for host-initiated connections (Firecracker's hybrid
// vsock, see Vsock). A stale socket file at uds (nobody accepting on it)
// is replaced. logf, if not nil, receives a line per unusual event,
// rate-limited. Close stops the listener and removes the socket file.
func NewVsock(guestCID uint64, uds string, logf func(string, ...any)) (*Vsock, error) {
	if guestCID < 3 || guestCID >= 0xffffffff {
		return nil, fmt.Errorf("virtio vsock: guest CID %d out of range [3, 2^32-2]", guestCID)
	}
	if uds == "" {
		return nil, errors.New("virtio vsock: empty Unix socket path")
	}
	ln, err := listenUnix(uds)
	if err != nil {
		return nil, err
	}
	v := &Vsock{
		cid:         guestCID,
		uds:         uds,
		logf:        logf,
		ln:          ln,
		handshaking: make(map[*net.UnixConn]struct{}),
		stopAccept:  make(chan struct{}),
	}
	binary.LittleEndian.PutUint64(v.config[:], guestCID)
	v.wg.Add(1)
	go v.acceptLoop()
	return v, nil
}

// VsockDialer connects a guest connection to host port port. It must
// not block for long: a Unix connect succeeds or fails at once.
type VsockDialer func(port uint32) (*net.UnixConn, error)

// SetDialer replaces how guest connections reach the host (by default a
// connect to "<uds>_<port>"), for a VMM that cannot reach those names
// itself (a jailed one asks its parent). Call it before the guest runs.
func (v *Vsock) SetDialer(d VsockDialer) { v.dial = d }

// listenUnix listens on path, replacing a stale socket left by a VMM that
// died without removing it, but never a live one or another kind of file.
func listenUnix(path string) (*net.UnixListener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("virtio vsock: %s exists and is not a socket", path)
		}
		// A probe: connecting to a Unix socket never waits (a full
		// backlog fails at once), so no time limit is needed. DialUnix,
		// unlike Dial, links none of net's name resolver into the VMM.
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("virtio vsock: %s is in use by another process", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("virtio vsock: %s: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("virtio vsock: removing stale %s: %w", path, err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("virtio vsock: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	return ln, nil
}

func (v *Vsock) log(format string, a ...any) {
	if v.logf != nil {
		v.logf("virtio vsock: "+format, a...)
	}
}

// Type implements Device: virtio-vsock is device ID 19 (virtio 1.2
// §5.10.1).
func (v *Vsock) Type() uint32 { return TypeVsock }

// Features implements Device: none. Stream sockets need no feature bit
// (virtio 1.2 §5.10.3: without VIRTIO_VSOCK_F_STREAM or _F_SEQPACKET
// negotiated, only stream is supported); SEQPACKET is not offered.
func (v *Vsock) Features() uint64 { return 0 }

// QueueMaxSizes implements Device: rx (0), tx (1) and event (2) queues
// (virtio 1.2 §5.10.2).
func (v *Vsock) QueueMaxSizes() []uint16 {
	return []uint16{vsockQueueSize, vsockQueueSize, vsockQueueSize}
}

// ReadConfig implements Device: struct virtio_vsock_config, le64 guest_cid
// (virtio 1.2 §5.10.4).
func (v *Vsock) ReadConfig(off uint64, data []byte) {
	if off < uint64(len(v.config)) {
		copy(data, v.config[off:])
	}
}

// WriteConfig implements Device: the configuration is read-only (virtio
// 1.2 §5.10.4).
func (v *Vsock) WriteConfig(uint64, []byte) {}

// Activate implements Device: the driver set DRIVER_OK (virtio 1.2
// §5.10.5). The device serves the TX queue, fills the RX queue with
// packets from the host side and leaves the event queue alone (it never
// sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET). Host connections that sent
// their Firecracker-style CONNECT line before the driver was ready are
// forwarded to the guest now.
func (v *Vsock) Activate(q *Queues) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return ErrVsockClosed
	}
	if len(q.Queues) != 3 || len(q.Notify) != 3 {
		return fmt.Errorf("virtio vsock: %d queues and %d notifiers, want 3", len(q.Queues), len(q.Notify))
	}
	if v.run != nil {
		return errors.New("virtio vsock: activated twice without a reset")
	}
	r := newVsockRun(v.cid, v.uds, q, v.logf)
	r.dial = v.dial
	r.start()
	for _, h := range v.waiting {
		r.hostConnect(h.sock, h.port)
	}
	v.waiting = nil
	v.run = r
	return nil
}

// Reset implements Device (virtio 1.2 §2.4): a device reset ends every
// connection. Each host socket is closed, nothing is sent to the guest,
// and the device goroutines stop. The listener on uds stays:
// host connections made until the next activation wait for it.
func (v *Vsock) Reset() {
	// MMIO.Close and Close may reset at the same time: the second waits
	// until the first has stopped everything.
	v.resetMu.Lock()
	defer v.resetMu.Unlock()
	v.mu.Lock()
	r := v.run
	v.run = nil
	v.mu.Unlock()
	if r != nil {
		r.stop()
	}
}

// Close ends the device's life: it resets the device (see Reset), stops
// listening for Firecracker-style host connections, closes the ones still
// waiting and removes the socket file at uds. It waits for every
// goroutine of the device. Call it after MMIO.Close (or instead of it when
// the transport never existed); calling it twice is harmless, and the
// device cannot be activated afterwards.
func (v *Vsock) Close() error {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return nil
	}
	v.closed = true
	close(v.stopAccept)
	waiting := v.waiting
	v.waiting = nil
	var hs []*net.UnixConn
	for c := range v.handshaking {
		hs = append(hs, c)
	}
	v.mu.Unlock()

	err := v.ln.Close() // also unlinks the socket file
	for _, c := range hs {
		c.Close()
	}
	for _, h := range waiting {
		h.sock.Close()
	}
	v.Reset()
	v.wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("virtio vsock: %w", err)
	}
	return nil
}

// acceptLoop takes host connections on uds for the device's whole life.
func (v *Vsock) acceptLoop() {
	defer v.wg.Done()
	for {
		c, err := v.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or similar: back off instead of
			// spinning, and stop if the device closes meanwhile.
			v.log("accept on %s: %v", v.uds, err)
			select {
			case <-v.stopAccept:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		v.mu.Lock()
		if v.closed || len(v.handshaking)+len(v.waiting) >= vsockMaxPending {
			v.mu.Unlock()
			c.Close()
			continue
		}
		v.handshaking[c] = struct{}{}
		v.wg.Add(1)
		v.mu.Unlock()
		go v.handshake(c)
	}
}

// handshake reads the host's "CONNECT <port>\n" and hands the connection
// to the running device, or parks it until the driver activates it.
func (v *Vsock) handshake(c *net.UnixConn) {
	defer v.wg.Done()
	port, err := readConnect(c)
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.handshaking, c)
	switch {
	case v.closed:
		c.Close()
	case err != nil:
		v.log("host connection on %s: %v", v.uds, err)
		c.Close()
	case v.run != nil:
		v.run.hostConnect(c, port)
	default:
		v.waiting = append(v.waiting, hostConn{c, port})
	}
}

// readConnect reads the CONNECT line byte by byte, so that no byte of the
// stream after it is consumed.
func readConnect(c *net.UnixConn) (uint32, error) {
	var line []byte
	var b [1]byte
	for {
		n, err := c.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			line = append(line, b[0])
			if len(line) > vsockConnectLine {
				return 0, errors.New("CONNECT line too long")
			}
		}
		if err != nil {
			return 0, fmt.Errorf("reading CONNECT line: %w", err)
		}
	}
	f := strings.Fields(string(line))
	if len(f) != 2 || f[0] != "CONNECT" {
		return 0, fmt.Errorf("bad request %q, want \"CONNECT <port>\"", line)
	}
	port, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil {
		return 0, fmt.Errorf("bad port in %q", line)
	}
	return uint32(port), nil
}
