package virtio

import (
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// vsockRun is one activation of the vsock device: the queues the driver
// set up and the connections made through them. Reset ends it.
//
// Goroutines: the TX queue is served by a workers goroutine (handleTX
// never blocks: host writes are non-blocking or buffered); the RX loop
// fills the guest's RX buffers with packets that connections and replies
// have queued, woken by a host-side kick or by the guest adding buffers
// (the notify forwarder); each established connection has a reader (host
// socket -> staging buffer) and a writer (buffer -> host socket).
//
// Locks: Vsock.mu before vsockRun.mu; vsockConn.mu before vsockRun.mu.
// vsockRun.mu is never held while taking a connection's mu.
type vsockRun struct {
	cid  uint64
	uds  string
	dial VsockDialer // nil: connect to uds_<port>
	logf func(string, ...any)
	q    *Queues
	w    *workers

	wake chan struct{} // cap 1: the RX loop has something to look at
	done chan struct{}
	wg   sync.WaitGroup // RX loop, forwarder, connection goroutines
	warn atomic.Int32   // log lines so far (rate limit)

	mu        sync.Mutex
	stopped   bool
	conns     map[vsockKey]*vsockConn
	hostPorts map[uint32]struct{} // local ports of host-initiated connections
	nextPort  uint32
	ready     []*vsockConn // connections with something to send, FIFO
	rsts      []vsockHdr   // RST packets waiting for an RX buffer
}

// vsockKey identifies a connection: the host-side port and the guest's.
type vsockKey struct{ local, peer uint32 }

func newVsockRun(cid uint64, uds string, q *Queues, logf func(string, ...any)) *vsockRun {
	return &vsockRun{
		cid:       cid,
		uds:       uds,
		logf:      logf,
		q:         q,
		wake:      make(chan struct{}, 1),
		done:      make(chan struct{}),
		conns:     make(map[vsockKey]*vsockConn),
		hostPorts: make(map[uint32]struct{}),
		nextPort:  vsockFirstHostPort,
	}
}

func (r *vsockRun) start() {
	r.w = &workers{q: r.q}
	r.w.serve(1, r.handleTX)
	r.wg.Add(2)
	go r.rxLoop()
	go r.forwardNotify()
}

// stop ends the activation: the queue goroutines stop, every connection
// is dropped (host socket closed) and all goroutines are waited for.
func (r *vsockRun) stop() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	close(r.done)
	if r.w != nil {
		r.w.shutdown() // also signals Notify[0], ending forwardNotify
	}
	r.closeAll()
	r.wg.Wait()
}

// closeAll drops every connection without telling the guest.
func (r *vsockRun) closeAll() {
	r.mu.Lock()
	conns := make([]*vsockConn, 0, len(r.conns))
	for _, c := range r.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		c.kill(false)
		c.mu.Unlock()
	}
}

// log reports an unusual event, at most 20 times per activation: a hostile
// guest must not flood the VMM's log.
func (r *vsockRun) log(format string, a ...any) {
	if r.logf == nil {
		return
	}
	switch n := r.warn.Add(1); {
	case n < 20:
		r.logf("virtio vsock: "+format, a...)
	case n == 20:
		r.logf("virtio vsock: "+format+" (further messages suppressed)", a...)
	}
}

func (r *vsockRun) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// forwardNotify turns the guest's RX-queue notifications (new buffers)
// into wake-ups of the RX loop.
func (r *vsockRun) forwardNotify() {
	defer r.wg.Done()
	for {
		if _, err := r.q.Notify[0].Wait(); err != nil {
			return
		}
		select {
		case <-r.done:
			return
		default:
		}
		r.kick()
	}
}

// markReady queues c for the RX loop.
func (r *vsockRun) markReady(c *vsockConn) {
	r.mu.Lock()
	queued := false
	if !c.queued && !r.stopped {
		c.queued, queued = true, true
		r.ready = append(r.ready, c)
	}
	r.mu.Unlock()
	if queued {
		r.kick()
	}
}

// queueRST queues an RST answering h, for a connection the device does
// not know (or no longer wants). Past vsockMaxQueuedRST such replies wait,
// more are dropped: the guest gets them only as fast as it gives RX
// buffers.
func (r *vsockRun) queueRST(h *vsockHdr) {
	rst := vsockHdr{
		srcCID: h.dstCID, dstCID: r.cid,
		srcPort: h.dstPort, dstPort: h.srcPort,
		typ: vsockTypeStream, op: vsockOpRST,
	}
	r.mu.Lock()
	ok := len(r.rsts) < vsockMaxQueuedRST && !r.stopped
	if ok {
		r.rsts = append(r.rsts, rst)
	}
	r.mu.Unlock()
	if ok {
		r.kick()
	}
}

// rxLoop sends queued packets to the guest as RX buffers allow.
func (r *vsockRun) rxLoop() {
	defer r.wg.Done()
	var spare *Chain // popped, not filled yet
	for {
		select {
		case <-r.done:
			return
		default:
		}
		var err error
		if spare, err = r.serveRX(spare); err != nil {
			r.q.Fail(err)
			return
		}
		select {
		case <-r.done:
			return
		case <-r.wake:
		}
	}
}

// serveRX fills RX buffers while there are packets to send and buffers to
// put them in. It returns a chain it popped but had nothing for.
func (r *vsockRun) serveRX(spare *Chain) (*Chain, error) {
	q := r.q.Queues[0]
	pushed := 0
	defer func() {
		if pushed > 0 {
			r.q.UsedBuffers(0)
		}
	}()
	for {
		select {
		case <-r.done:
			return spare, nil
		default:
		}
		if !r.hasWork() {
			return spare, nil
		}
		if spare == nil {
			c, again, err := q.PopOrArm()
			if err != nil {
				return nil, err
			}
			if c == nil {
				if !again {
					return nil, nil // out of buffers: wait for the driver
				}
				continue
			}
			spare = c
		}
		n, ok, err := r.fill(spare)
		if err != nil {
			return nil, err
		}
		if !ok {
			return spare, nil
		}
		if err := q.Push(spare.Head, n); err != nil {
			return nil, err
		}
		spare = nil
		if pushed++; pushed == 64 {
			// Let the guest start on a long batch.
			r.q.UsedBuffers(0)
			pushed = 0
		}
	}
}

func (r *vsockRun) hasWork() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.rsts) > 0 || len(r.ready) > 0
}

// fill writes the next packet into c: a queued RST, or what the first
// ready connection has to send. ok is false when nothing was sent.
func (r *vsockRun) fill(c *Chain) (n uint32, ok bool, err error) {
	w := c.Writer()
	if w.Remaining() < vsockHdrSize {
		return 0, false, fmt.Errorf("%w: vsock rx buffer %d has %d writable bytes, less than a packet header", ErrQueue, c.Head, w.Remaining())
	}
	for {
		r.mu.Lock()
		if len(r.rsts) > 0 {
			h := r.rsts[0]
			r.rsts = r.rsts[1:]
			if len(r.rsts) == 0 {
				r.rsts = nil
			}
			r.mu.Unlock()
			var b [vsockHdrSize]byte
			h.encode(b[:])
			if _, err := w.Write(b[:]); err != nil {
				return 0, false, err
			}
			return w.Written(), true, nil
		}
		if len(r.ready) == 0 {
			r.ready = nil
			r.mu.Unlock()
			return 0, false, nil
		}
		vc := r.ready[0]
		r.ready[0] = nil
		r.ready = r.ready[1:]
		vc.queued = false
		r.mu.Unlock()

		sent, more, err := vc.emit(w)
		if err != nil {
			return 0, false, err
		}
		if more {
			r.markReady(vc) // to the back: connections take turns
		}
		if sent {
			return w.Written(), true, nil
		}
	}
}

// handleTX serves one packet from the guest (virtio 1.2 §5.10.6). Only a
// chain too short for the header is a driver error; everything wrong
// inside a packet is answered with RST or dropped.
func (r *vsockRun) handleTX(c *Chain) (uint32, error) {
	rd := c.Reader()
	var b [vsockHdrSize]byte
	if err := rd.ReadFull(b[:]); err != nil {
		return 0, fmt.Errorf("%w: vsock tx chain %d has %d readable bytes, less than a packet header", ErrQueue, c.Head, c.ReadableLen())
	}
	var h vsockHdr
	h.decode(b[:])
	r.packet(&h, rd)
	return 0, nil
}

func (r *vsockRun) packet(h *vsockHdr, rd *Reader) {
	if h.srcCID != r.cid {
		// Not from our guest: nobody to answer.
		r.log("dropping a packet from CID %d (guest CID is %d)", h.srcCID, r.cid)
		return
	}
	if h.op == vsockOpRST && (h.dstCID != vsockHostCID || h.typ != vsockTypeStream) {
		return
	}
	if h.dstCID != vsockHostCID || h.typ != vsockTypeStream {
		r.queueRST(h)
		return
	}
	key := vsockKey{local: h.dstPort, peer: h.srcPort}
	r.mu.Lock()
	c := r.conns[key]
	r.mu.Unlock()

	malformed := h.len > vsockMaxPkt || uint64(h.len) > rd.Remaining()
	if c == nil {
		switch {
		case h.op == vsockOpRST:
		case h.op == vsockOpRequest && !malformed:
			r.guestConnect(h)
		default:
			r.queueRST(h)
		}
		return
	}

	c.mu.Lock()
	reconnect := c.packet(h, rd, malformed)
	c.mu.Unlock()
	if reconnect {
		r.guestConnect(h)
	}
}

// packet serves a packet for c (c.mu held). It reports a REQUEST that
// replaced c and must be served as a new connection.
func (c *vsockConn) packet(h *vsockHdr, rd *Reader, malformed bool) (reconnect bool) {
	r := c.r
	if c.dead {
		if h.op != vsockOpRST {
			r.queueRST(h)
		}
		return false
	}
	if malformed {
		r.log("connection %d:%d: packet op %d with length %d beyond the chain or the maximum", c.key.local, c.key.peer, h.op, h.len)
		c.kill(true)
		return false
	}
	c.peerCreditUpdate(h.bufAlloc, h.fwdCnt)
	switch h.op {
	case vsockOpRST:
		c.kill(false)
	case vsockOpRequest:
		// A REQUEST on a live connection breaks the protocol, unless
		// the host end is gone and the guest reuses the ports: then the
		// old connection is forgotten.
		reconnect = c.state == vsockClosing
		c.kill(!reconnect)
	case vsockOpResponse:
		if !c.hostInit {
			c.kill(true) // the guest asked for this one itself
			return false
		}
		c.established()
	case vsockOpShutdown:
		c.guestShutdown(h.flags)
	case vsockOpRW:
		c.guestData(rd, h.len)
	case vsockOpCreditUpdate:
	case vsockOpCreditRequest:
		c.pend |= vsockPendCredit
		r.markReady(c)
	default:
		c.kill(true)
	}
	return reconnect
}

// guestConnect serves a guest REQUEST for a new connection: it connects to
// "<uds>_<port>" (a Unix connect does not block: it succeeds, or fails at
// once when nobody listens or the backlog is full) and answers RESPONSE,
// or RST if that fails.
func (r *vsockRun) guestConnect(h *vsockHdr) {
	key := vsockKey{local: h.dstPort, peer: h.srcPort}
	r.mu.Lock()
	full := r.stopped || len(r.conns) >= vsockMaxConns
	r.mu.Unlock()
	if full {
		r.queueRST(h)
		return
	}
	var sock *net.UnixConn
	var err error
	if r.dial != nil {
		sock, err = r.dial(h.dstPort)
	} else {
		sock, err = DialSocket(r.uds + "_" + strconv.FormatUint(uint64(h.dstPort), 10))
	}
	if err != nil {
		r.queueRST(h)
		return
	}
	c, err := newVsockConn(r, key, sock, false)
	if err != nil {
		sock.Close()
		r.queueRST(h)
		return
	}
	c.peerBufAlloc, c.peerFwdCnt = h.bufAlloc, h.fwdCnt
	c.pend = vsockPendResponse
	c.mu.Lock()
	defer c.mu.Unlock()
	r.mu.Lock()
	if r.stopped || r.conns[key] != nil || len(r.conns) >= vsockMaxConns {
		r.mu.Unlock()
		sock.Close()
		r.queueRST(h)
		return
	}
	r.conns[key] = c
	r.mu.Unlock()
	c.established()
	r.markReady(c)
}

// hostConnect starts a host-initiated connection to port in the guest: a
// REQUEST from a fresh host-side port. Called with Vsock.mu held.
func (r *vsockRun) hostConnect(sock *net.UnixConn, port uint32) {
	r.mu.Lock()
	if r.stopped || len(r.conns) >= vsockMaxConns {
		r.mu.Unlock()
		sock.Close()
		return
	}
	var key vsockKey
	found := false
	for i := 0; i <= vsockMaxConns && !found; i++ {
		p := r.nextPort
		if r.nextPort++; r.nextPort == 0 {
			r.nextPort = vsockFirstHostPort
		}
		key = vsockKey{local: p, peer: port}
		_, used := r.hostPorts[p]
		found = !used && r.conns[key] == nil
	}
	r.mu.Unlock()
	if !found {
		sock.Close()
		return
	}
	c, err := newVsockConn(r, key, sock, true)
	if err != nil {
		sock.Close()
		return
	}
	c.pend = vsockPendRequest
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		sock.Close()
		return
	}
	r.conns[key] = c
	r.hostPorts[key.local] = struct{}{}
	r.mu.Unlock()
	r.markReady(c)
}

// Connection states.
const (
	vsockConnecting  = iota // host-initiated: REQUEST sent or to send
	vsockEstablished        // data flows
	vsockClosing            // the host end closed; waiting for the guest's RST
)

// Things a connection has to send besides data.
const (
	vsockPendRequest = 1 << iota
	vsockPendResponse
	vsockPendShutdown
	vsockPendCredit
)

// vsockConn is one stream connection between a guest port and a host Unix
// socket.
type vsockConn struct {
	r        *vsockRun
	key      vsockKey
	hostInit bool
	sock     *net.UnixConn
	raw      syscall.RawConn
	queued   bool // in r.ready; guarded by r.mu

	mu     sync.Mutex
	rdCond sync.Cond // the reader waits for room and credit
	wrCond sync.Cond // the writer waits for data
	state  int
	dead   bool // removed: socket closed, goroutines leaving
	pend   int
	timer  *time.Timer

	// guest -> host
	tx        vsockRing // data not written to the host yet
	fwdCnt    uint32    // bytes written to the host socket
	lastFwd   uint32    // fwd_cnt last reported to the guest
	hostReady bool      // the host socket may take guest data directly
	wrClosed  bool      // the host's write side was shut down
	guestShut uint32    // SHUTDOWN flags the guest sent

	// host -> guest
	rx           vsockRing // read from the host, not sent yet
	rxCnt        uint32    // bytes sent to the guest (tx_cnt)
	peerBufAlloc uint32
	peerFwdCnt   uint32
	hostEOF      bool
	hostHUP      bool   // the host closed its socket, not just its write side
	shutSent     uint32 // SHUTDOWN flags sent to the guest
}

func newVsockConn(r *vsockRun, key vsockKey, sock *net.UnixConn, hostInit bool) (*vsockConn, error) {
	raw, err := sock.SyscallConn()
	if err != nil {
		return nil, err
	}
	c := &vsockConn{r: r, key: key, hostInit: hostInit, sock: sock, raw: raw}
	c.rdCond.L = &c.mu
	c.wrCond.L = &c.mu
	if hostInit {
		c.state = vsockConnecting
	} else {
		c.state = vsockEstablished
	}
	return c, nil
}

// hdr returns a packet header for c with the current credit.
func (c *vsockConn) hdr(op uint16) vsockHdr {
	return vsockHdr{
		srcCID: vsockHostCID, dstCID: c.r.cid,
		srcPort: c.key.local, dstPort: c.key.peer,
		typ: vsockTypeStream, op: op,
		bufAlloc: vsockBufAlloc, fwdCnt: c.fwdCnt,
	}
}

// peerCredit returns how many more bytes the guest can take (virtio 1.2
// §5.10.6, "Buffer Space Management"). A guest claiming to have consumed
// more than it was sent gets no credit.
func (c *vsockConn) peerCredit() uint32 {
	inFlight := c.rxCnt - c.peerFwdCnt
	if inFlight >= c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inFlight
}

// peerCreditUpdate records the credit fields of a guest packet.
func (c *vsockConn) peerCreditUpdate(bufAlloc, fwdCnt uint32) {
	old := c.peerCredit()
	c.peerBufAlloc, c.peerFwdCnt = bufAlloc, fwdCnt
	if c.peerCredit() > old {
		c.rdCond.Signal()
		if c.rx.n > 0 {
			c.r.markReady(c)
		}
	}
}

// kill removes the connection: the host socket is closed and, with rst,
// the guest is sent RST. Called with c.mu held.
func (c *vsockConn) kill(rst bool) {
	if c.dead {
		return
	}
	c.dead = true
	if c.timer != nil {
		c.timer.Stop()
	}
	c.sock.Close()
	c.rdCond.Broadcast()
	c.wrCond.Broadcast()
	r := c.r
	r.mu.Lock()
	if r.conns[c.key] == c {
		delete(r.conns, c.key)
		if c.hostInit {
			delete(r.hostPorts, c.key.local)
		}
	}
	if c.queued {
		// A guest opening and breaking connections without giving RX
		// buffers must not grow the ready list.
		c.queued = false
		if i := slices.Index(r.ready, c); i >= 0 {
			r.ready = slices.Delete(r.ready, i, i+1)
		}
	}
	// Answers to connections the guest broke wait in a bounded queue too.
	rst = rst && !r.stopped && len(r.rsts) < vsockMaxQueuedRST+vsockMaxConns
	if rst {
		r.rsts = append(r.rsts, c.hdr(vsockOpRST))
	}
	r.mu.Unlock()
	if rst {
		r.kick()
	}
}

// setTimer arms the connection's single timer: when it fires in the same
// state, the connection is reset.
func (c *vsockConn) setTimer(d time.Duration) {
	if c.timer != nil {
		c.timer.Stop()
	}
	state := c.state
	c.timer = time.AfterFunc(d, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.dead && c.state == state {
			c.kill(true)
		}
	})
}

// established starts the data flow: the guest answered a host-initiated
// REQUEST, or the host socket of a guest-initiated one is connected.
func (c *vsockConn) established() {
	if c.hostInit {
		if c.state != vsockConnecting || c.pend&vsockPendRequest != 0 {
			c.kill(true) // a RESPONSE nobody asked for
			return
		}
		c.state = vsockEstablished
		if c.timer != nil {
			c.timer.Stop()
		}
	} else {
		c.hostReady = true
	}
	c.r.wg.Add(2)
	go c.readLoop()
	go c.writeLoop()
}

// guestShutdown applies the guest's SHUTDOWN flags.
func (c *vsockConn) guestShutdown(flags uint32) {
	if c.state != vsockEstablished {
		// Before the RESPONSE, or after the host end went away: the
		// guest waits for RST either way.
		c.kill(true)
		return
	}
	flags &= vsockShutRCV | vsockShutSEND
	c.guestShut |= flags
	if flags&vsockShutRCV != 0 {
		c.rx.consume(c.rx.n) // the guest will read no more
		c.rdCond.Broadcast()
	}
	if flags&vsockShutSEND != 0 {
		c.wrCond.Broadcast()
	}
	c.checkDone()
}

// checkDone ends a connection both of whose directions are finished, with
// the RST the guest waits for after its SHUTDOWN.
func (c *vsockConn) checkDone() {
	if c.dead || c.state != vsockEstablished {
		return
	}
	rxDone := c.guestShut&vsockShutRCV != 0 || c.shutSent&vsockShutSEND != 0
	if c.wrClosed && rxDone {
		c.kill(true)
	}
}

// guestData takes n bytes of stream data from the guest: straight into
// the host socket as far as it accepts them without blocking, the rest
// into the connection's buffer, which the guest's credit keeps within
// vsockBufAlloc.
func (c *vsockConn) guestData(rd *Reader, n uint32) {
	switch {
	case c.state == vsockClosing:
		return // the host end is gone; the guest has been told
	case c.state != vsockEstablished || c.guestShut&vsockShutSEND != 0:
		c.kill(true)
		return
	case n == 0:
		return
	case c.tx.n+int(n) > vsockBufAlloc:
		c.r.log("connection %d:%d: the guest sent beyond its credit", c.key.local, c.key.peer)
		c.kill(true)
		return
	}
	bufs, err := rd.Buffers(uint64(n))
	if err != nil {
		c.kill(true)
		return
	}
	if c.hostReady && c.tx.n == 0 && len(bufs) <= vsockMaxIov {
		written, err := c.writeNow(bufs)
		if err != nil {
			c.kill(true)
			return
		}
		c.fwdCnt += uint32(written)
		bufs = advance(bufs, written)
	}
	buffered := false
	for _, b := range bufs {
		if len(b) > 0 {
			c.tx.write(b)
			buffered = true
		}
	}
	if buffered {
		c.wrCond.Signal()
	}
	c.creditCheck()
}

// writeNow writes bufs to the host socket without blocking and returns
// how much it took.
func (c *vsockConn) writeNow(bufs [][]byte) (int, error) {
	var n int
	var werr error
	err := c.raw.Write(func(fd uintptr) bool {
		for {
			n, werr = unix.Writev(int(fd), bufs)
			if werr != unix.EINTR {
				return true
			}
		}
	})
	if err != nil {
		return 0, err
	}
	if werr == unix.EAGAIN {
		return 0, nil
	}
	return max(n, 0), werr
}

// creditCheck queues a CREDIT_UPDATE once a good part of the window was
// forwarded without the guest hearing of it.
func (c *vsockConn) creditCheck() {
	if c.fwdCnt-c.lastFwd >= vsockCreditThreshold && c.pend&vsockPendCredit == 0 {
		c.pend |= vsockPendCredit
		c.r.markReady(c)
	}
}

// emit writes c's next packet to the guest into w. more reports that c
// has more to send.
func (c *vsockConn) emit(w *Writer) (sent, more bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return false, false, nil
	}
	var h vsockHdr
	var payload int
	room := int(min(w.Remaining()-vsockHdrSize, vsockMaxPkt))
	switch {
	case c.pend&vsockPendRequest != 0:
		c.pend &^= vsockPendRequest
		h = c.hdr(vsockOpRequest)
		c.setTimer(vsockConnectTimeout)
	case c.pend&vsockPendResponse != 0:
		c.pend &^= vsockPendResponse
		h = c.hdr(vsockOpResponse)
	case c.canSend() && room > 0:
		payload = min(c.rx.n, int(c.peerCredit()), room)
		h = c.hdr(vsockOpRW)
		h.len = uint32(payload)
	case c.canSend():
		// A buffer with room for a header only (no driver does that):
		// never an empty RW, which a guest would read as end of stream.
		h = c.hdr(vsockOpCreditUpdate)
	case c.pend&vsockPendShutdown != 0 && c.rx.n == 0:
		c.pend &^= vsockPendShutdown
		h = c.hdr(vsockOpShutdown)
		h.flags = vsockShutSEND
		if c.hostHUP {
			h.flags |= vsockShutRCV
		}
	case c.pend&vsockPendCredit != 0:
		h = c.hdr(vsockOpCreditUpdate)
	default:
		return false, false, nil
	}
	// Every packet carries the credit.
	c.pend &^= vsockPendCredit
	c.lastFwd = c.fwdCnt

	var b [vsockHdrSize]byte
	h.encode(b[:])
	if _, err := w.Write(b[:]); err != nil {
		return false, false, err
	}
	if payload > 0 {
		for done := 0; done < payload; {
			seg := c.rx.used()
			seg = seg[:min(len(seg), payload-done)]
			if _, err := w.Write(seg); err != nil {
				return false, false, err
			}
			c.rx.consume(len(seg))
			done += len(seg)
		}
		c.rxCnt += uint32(payload)
		c.rdCond.Signal()
	}
	if h.op == vsockOpShutdown {
		c.shutSent |= h.flags
		if c.hostHUP {
			// The host closed its socket: nothing more can flow either
			// way. The guest answers RST (or SHUTDOWN); if it does not,
			// the timer resets the connection.
			c.state = vsockClosing
			c.sock.Close()
			c.rdCond.Broadcast()
			c.wrCond.Broadcast()
			c.setTimer(vsockCloseTimeout)
		} else {
			c.checkDone()
		}
	}
	more = !c.dead && (c.pend&^vsockPendShutdown != 0 ||
		c.pend&vsockPendShutdown != 0 && c.rx.n == 0 || c.canSend())
	return true, more, nil
}

// canSend reports whether c has host data the guest has credit for.
func (c *vsockConn) canSend() bool {
	return c.state == vsockEstablished && c.rx.n > 0 && c.peerCredit() > 0 && c.guestShut&vsockShutRCV == 0
}

// readLoop moves host data into the staging buffer, as far as the guest's
// credit reaches.
func (c *vsockConn) readLoop() {
	defer c.r.wg.Done()
	for {
		c.mu.Lock()
		var room []byte
		for {
			if c.dead || c.state != vsockEstablished || c.guestShut&vsockShutRCV != 0 {
				c.mu.Unlock()
				return
			}
			if room = c.rxRoom(); len(room) > 0 {
				break
			}
			c.rdCond.Wait()
		}
		c.mu.Unlock()

		// Only this goroutine appends to rx, and consuming does not move
		// where appends go: room stays valid without the lock.
		n, err := c.sock.Read(room)
		hup := false
		if errors.Is(err, io.EOF) {
			hup = c.peerHungUp()
		}

		c.mu.Lock()
		if c.dead || c.state != vsockEstablished {
			c.mu.Unlock()
			return
		}
		if n > 0 && c.guestShut&vsockShutRCV == 0 {
			c.rx.commit(n)
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			c.hostEOF, c.hostHUP = true, hup
			c.pend |= vsockPendShutdown
		default:
			c.kill(true)
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		c.r.markReady(c)
		if err != nil {
			return
		}
	}
}

// rxRoom returns the free part of rx the guest has credit for.
func (c *vsockConn) rxRoom() []byte {
	if c.rx.buf == nil {
		c.rx.buf = make([]byte, vsockRxBuf)
	}
	credit := int(c.peerCredit())
	if credit <= c.rx.n {
		return nil
	}
	room := c.rx.free()
	return room[:min(len(room), credit-c.rx.n)]
}

// peerHungUp reports whether the host closed its socket entirely (Linux
// sets POLLHUP on a Unix stream socket once both directions are shut
// down), as opposed to shutting down its write side only.
func (c *vsockConn) peerHungUp() bool {
	hup := false
	c.raw.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if n, err := unix.Poll(fds, 0); err == nil && n > 0 {
			hup = fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0
		}
	})
	return hup
}

// writeLoop writes buffered guest data to the host socket. For a
// host-initiated connection it first answers the host's CONNECT.
func (c *vsockConn) writeLoop() {
	defer c.r.wg.Done()
	if c.hostInit {
		ok := "OK " + strconv.FormatUint(uint64(c.key.local), 10) + "\n"
		_, err := c.sock.Write([]byte(ok))
		c.mu.Lock()
		if err != nil {
			c.kill(true)
			c.mu.Unlock()
			return
		}
		c.hostReady = true
		c.mu.Unlock()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		switch {
		case c.dead || c.state != vsockEstablished:
			return
		case c.tx.n > 0:
			// Only this goroutine consumes tx, and appends do not move
			// its used part: seg stays valid without the lock.
			seg := c.tx.used()
			c.mu.Unlock()
			n, err := c.sock.Write(seg)
			c.mu.Lock()
			if c.dead || c.state != vsockEstablished {
				return
			}
			c.tx.consume(n)
			c.fwdCnt += uint32(n)
			if c.tx.n == 0 {
				c.tx.release()
			}
			if err != nil {
				c.kill(true)
				return
			}
			c.creditCheck()
		case c.guestShut&vsockShutSEND != 0:
			c.wrClosed = true
			c.mu.Unlock()
			err := c.sock.CloseWrite()
			c.mu.Lock()
			if err != nil && !c.dead {
				c.kill(true)
				return
			}
			c.checkDone()
			return
		default:
			c.wrCond.Wait()
		}
	}
}

// vsockRing is a byte ring buffer. One goroutine appends, another
// consumes; each may use the slice it got from free or used without the
// lock while the other works on the other part.
type vsockRing struct {
	buf  []byte
	head int // start of the data
	n    int // bytes of data
}

var vsockTxPool = sync.Pool{New: func() any {
	b := make([]byte, vsockBufAlloc)
	return &b
}}

// free returns the contiguous free space after the data. Only the
// appending side calls it (it may move an empty ring's start).
func (r *vsockRing) free() []byte {
	if r.n == 0 {
		r.head = 0
	}
	tail := (r.head + r.n) % len(r.buf)
	if tail < r.head || r.n == len(r.buf) {
		return r.buf[tail:r.head]
	}
	return r.buf[tail:]
}

// used returns the contiguous data at the head.
func (r *vsockRing) used() []byte {
	end := min(r.head+r.n, len(r.buf))
	return r.buf[r.head:end]
}

func (r *vsockRing) commit(n int) { r.n += n }

// consume drops n bytes at the head. It never moves the tail, where the
// appending goroutine may be filling a slice it got from free.
func (r *vsockRing) consume(n int) {
	if n == 0 {
		return
	}
	r.n -= n
	r.head = (r.head + n) % len(r.buf)
}

// write appends p (the caller checked the room), taking a buffer from the
// pool if the ring has none.
func (r *vsockRing) write(p []byte) {
	if r.buf == nil {
		r.buf = *vsockTxPool.Get().(*[]byte)
		r.head, r.n = 0, 0
	}
	for len(p) > 0 {
		k := copy(r.free(), p)
		if k == 0 {
			return // full: the caller's check prevents this
		}
		r.commit(k)
		p = p[k:]
	}
}

// release gives an empty buffer back to the pool.
func (r *vsockRing) release() {
	if r.buf != nil && r.n == 0 {
		b := r.buf
		r.buf = nil
		vsockTxPool.Put(&b)
	}
}

// ErrNotSocket is a vsock host path that is not a Unix socket itself (a
// symbolic link, a file).
var ErrNotSocket = errors.New("vsock: not a Unix socket")

// DialSocket connects to the Unix socket at path for a guest's
// connection. The guest picks the port, and so the name: a symbolic link
// there (which another user could plant in a shared directory, towards a
// socket only the VMM's user may reach) is refused, and what is
// connected to is the socket that was checked (through its O_PATH
// descriptor), not whatever the name means a moment later.
func DialSocket(path string) (*net.UnixConn, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock: %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("vsock: %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil, fmt.Errorf("%w: %s", ErrNotSocket, path)
	}
	return net.DialUnix("unix", nil, &net.UnixAddr{Name: fmt.Sprintf("/proc/self/fd/%d", fd), Net: "unix"})
}
