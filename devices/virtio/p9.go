package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// TypeP9 is the 9P transport's device ID (virtio 1.2 §5, "Device Types").
const TypeP9 = 9

// Feature9PMountTag says the configuration space holds a mount tag
// (VIRTIO_9P_MOUNT_TAG, Linux include/uapi/linux/virtio_9p.h).
const Feature9PMountTag = 1 << 0

// 9P message limits.
const (
	p9HeaderSize = 7 // size[4] type[1] tag[2]
	// p9MaxMessage bounds one message: Linux's virtio transport caps
	// msize at 128 pages less 3 (net/9p/trans_virtio.c); the device
	// takes up to 1 MiB and drops larger ones.
	p9MaxMessage = 1 << 20
	// p9Queued bounds the requests waiting for the server to read them,
	// and so the memory a driver can make the device hold.
	p9Queued = 16
	// p9MaxTagLen is the longest mount tag.
	p9MaxTagLen = 256
	// Message types the transport itself reads or writes (9P2000.L).
	p9Rlerror = 7
	p9Tflush  = 108
	p9Rflush  = 109
)

// P9Server serves one 9P connection: requests arrive on t and replies go
// to w, each a whole 9P message, replies in any order. Handle returns
// when t reaches EOF and every request has its reply.
// t also has a Done method, whose channel closes when the connection
// ends (a reset): a server in another process (devices/share/remote)
// bounds its last waits from then.
// *github.com/hugelgupf/p9/p9.Server is one.
type P9Server interface {
	Handle(t io.ReadCloser, w io.WriteCloser) error
}

// P9 is the virtio 9P transport, the device behind Linux's 9p "virtio"
// transport (net/9p/trans_virtio.c; the virtio specification reserves
// its ID but does not describe it). It has one request queue: each chain
// carries one T-message in its readable part and receives the R-message
// with the same tag in its writable part. The configuration space is the
// mount tag: le16 tag_len, then the tag's bytes.
//
// The device only moves messages. The file server, and its confinement,
// is the P9Server's. Replies come back from the server's goroutines in
// any order and complete their chains by tag. Tflush is the transport's
// own (see p9Conn).
type P9 struct {
	tag    []byte
	config []byte
	srv    P9Server
	logf   func(string, ...any)
	// served is set once the driver has sent a request (see Served).
	served atomic.Bool

	mu  sync.Mutex
	run *p9Run
}

// NewP9 returns a 9P transport with mount tag tag (1 to 256 bytes) whose
// requests srv serves, one connection per driver activation.
func NewP9(tag string, srv P9Server, logf func(string, ...any)) (*P9, error) {
	if len(tag) == 0 || len(tag) > p9MaxTagLen {
		return nil, fmt.Errorf("virtio 9p: mount tag %q: must be 1 to %d bytes", tag, p9MaxTagLen)
	}
	cfg := make([]byte, 2+len(tag))
	binary.LittleEndian.PutUint16(cfg, uint16(len(tag)))
	copy(cfg[2:], tag)
	return &P9{tag: []byte(tag), config: cfg, srv: srv, logf: logf}, nil
}

// Type implements Device.
func (p *P9) Type() uint32 { return TypeP9 }

// Features implements Device: the mount tag.
func (p *P9) Features() uint64 { return Feature9PMountTag }

// QueueMaxSizes implements Device: one request queue, of Linux's size.
func (p *P9) QueueMaxSizes() []uint16 { return []uint16{128} }

// ReadConfig implements Device.
func (p *P9) ReadConfig(off uint64, data []byte) {
	for i := range data {
		data[i] = 0
		if o := off + uint64(i); o < uint64(len(p.config)) {
			data[i] = p.config[o]
		}
	}
}

// WriteConfig implements Device: the configuration is read-only.
func (p *P9) WriteConfig(uint64, []byte) {}

// Tag returns the device's mount tag.
func (p *P9) Tag() string { return string(p.tag) }

// Served reports whether the driver has sent the device a request since
// the device was made: whether the guest may have mounted the share, and
// so hold fids whose host side (the server's open files of one
// connection) no snapshot can keep. A device whose driver only probed it
// (read the tag, set DRIVER_OK) has served nothing, and its connection
// can be dropped and made again, as Quiesce and Restore do.
//
// Neither a reset nor an activation clears it: a reset does not tell the
// device whether the guest dropped its mounts (Linux resets every virtio
// device when it resumes from suspend and keeps its mounts; MMIO.Quiesce
// resets the device without the guest knowing), so once set it stays
// set.
func (p *P9) Served() bool { return p.served.Load() }

// Activate implements Device: a new server connection.
func (p *P9) Activate(q *Queues) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(q.Queues) != 1 || len(q.Notify) != 1 {
		return fmt.Errorf("virtio 9p: %d queues, want 1", len(q.Queues))
	}
	if p.run != nil {
		return errors.New("virtio 9p: activated twice without a reset")
	}
	r := &p9Run{q: q, logf: p.logf, served: &p.served, done: make(chan struct{})}
	r.conn = newP9Conn(p.srv, r.log)
	r.wg.Add(1)
	go r.serve()
	p.run = r
	return nil
}

// Reset implements Device: the connection ends (the server closes every
// file it opened for it) and requests without a reply are dropped.
func (p *P9) Reset() {
	p.mu.Lock()
	r := p.run
	p.run = nil
	p.mu.Unlock()
	if r != nil {
		r.stop()
	}
}

// p9Run is one activation: the queue, and the connection to the server.
type p9Run struct {
	q    *Queues
	logf func(string, ...any)
	// served is the device's P9.served, set by each request.
	served *atomic.Bool
	conn   *p9Conn
	done   chan struct{}
	wg     sync.WaitGroup

	// mu guards the queue (popped by serve, pushed from the server's
	// goroutines) and stopped.
	mu      sync.Mutex
	stopped bool
}

func (r *p9Run) log(format string, a ...any) {
	if r.logf != nil {
		r.logf("virtio 9p: "+format, a...)
	}
}

// stop ends the connection and waits for the server and the queue loop.
func (r *p9Run) stop() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	close(r.done)
	_ = r.q.Notify[0].Signal()
	r.wg.Wait()
	r.conn.close()
}

// serve takes requests off the queue until the run stops.
func (r *p9Run) serve() {
	defer r.wg.Done()
	q := r.q.Queues[0]
	for {
		r.mu.Lock()
		c, again, err := q.PopOrArm()
		r.mu.Unlock()
		switch {
		case err != nil:
			r.q.Fail(err)
			return
		case c != nil:
			if !r.request(c) {
				return
			}
		case !again:
			// Armed: wait for the driver's notification.
			select {
			case <-r.done:
				return
			default:
			}
			if _, err := r.q.Notify[0].Wait(); err != nil {
				return
			}
			r.mu.Lock()
			err := q.DisableNotify()
			r.mu.Unlock()
			if err != nil {
				r.q.Fail(err)
				return
			}
		}
	}
}

// request reads one T-message and submits it. It reports false when the
// run stopped.
func (r *p9Run) request(c *Chain) bool {
	// Any chain counts, a malformed one too: the driver is using the
	// device, not merely probing it.
	r.served.Store(true)
	var hdr [p9HeaderSize]byte
	rd := c.Reader()
	if err := rd.ReadFull(hdr[:]); err != nil {
		r.log("request of %d readable bytes, below a 9P header", c.ReadableLen())
		r.complete(c, 0)
		return true
	}
	size := binary.LittleEndian.Uint32(hdr[0:])
	if size < p9HeaderSize || size > p9MaxMessage || uint64(size) > c.ReadableLen() {
		r.log("request of %d bytes in a chain of %d readable bytes", size, c.ReadableLen())
		r.complete(c, 0)
		return true
	}
	msg := make([]byte, size)
	copy(msg, hdr[:])
	if err := rd.ReadFull(msg[p9HeaderSize:]); err != nil {
		r.complete(c, 0)
		return true
	}
	switch r.conn.submit(msg, func(reply []byte) { r.reply(c, reply) }, r.done) {
	case submitStopped:
		return false
	case submitRefused:
		r.complete(c, 0)
	}
	return true
}

// complete returns c to the driver with written bytes of reply.
func (r *p9Run) complete(c *Chain, written uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return
	}
	if err := r.q.Queues[0].Push(c.Head, written); err != nil {
		r.q.Fail(err)
		return
	}
	r.q.UsedBuffers(0)
}

// reply writes msg into c and completes it.
func (r *p9Run) reply(c *Chain, msg []byte) {
	w := c.Writer()
	if uint64(len(msg)) > w.Remaining() {
		// The driver left too little room: an error reply instead.
		r.log("reply of %d bytes for a chain of %d writable bytes", len(msg), w.Remaining())
		msg = p9Error(binary.LittleEndian.Uint16(msg[5:]), uint32(unix.ENOBUFS))
		if uint64(len(msg)) > w.Remaining() {
			msg = nil
		}
	}
	if _, err := w.Write(msg); err != nil {
		r.log("reply: %v", err)
	}
	r.complete(c, w.Written())
}

// p9Error encodes Rlerror: size[4] type[1] tag[2] ecode[4].
func p9Error(tag uint16, errno uint32) []byte {
	b := p9Header(11, p9Rlerror, tag)
	return binary.LittleEndian.AppendUint32(b, errno)
}

// p9Header starts a message of size bytes.
func p9Header(size uint32, typ byte, tag uint16) []byte {
	b := make([]byte, 7, size)
	binary.LittleEndian.PutUint32(b, size)
	b[4] = typ
	binary.LittleEndian.PutUint16(b[5:], tag)
	return b
}

// p9Conn is one connection to the server: requests go in with a
// function that takes their reply, and replies come back by tag.
//
// It answers Tflush itself and never passes it on: p9's server waits for
// the flushed tag inside the request, so a Tflush of its own tag, or two
// that flush each other, would block the server forever, and with it the
// device's reset. Here a flush of a tag with no request waiting is
// answered at once, and one of a waiting request right after that
// request's reply (9P's rule: Rflush comes after the flushed reply).
// Flushes only wait on requests that came before them, so they cannot
// wait on each other in a cycle.
type p9Conn struct {
	reqs    chan []byte // T-messages for the server, in queue order
	done    chan struct{}
	srvDone chan struct{}
	logf    func(string, ...any)

	mu      sync.Mutex
	waiting map[uint16]func([]byte)  // by tag: the reply's taker
	flushes map[uint16][]flushWaiter // by the tag they flush
	// flushTags are the tags of the Tflushes waiting: the transport
	// answers them, and a reply from the server with one is dropped
	// (it never saw them), lest a chain be completed twice.
	flushTags map[uint16]bool
	closed    bool
}

// flushWaiter is a Tflush waiting for the reply to the tag it flushes.
type flushWaiter struct {
	tag   uint16
	reply func([]byte)
}

// submit results.
const (
	submitted     = iota
	submitRefused // a tag already waiting: nothing was sent
	submitStopped // the connection or the device stopped
)

func newP9Conn(srv P9Server, logf func(string, ...any)) *p9Conn {
	c := &p9Conn{
		reqs:      make(chan []byte, p9Queued),
		done:      make(chan struct{}),
		srvDone:   make(chan struct{}),
		logf:      logf,
		waiting:   map[uint16]func([]byte){},
		flushes:   map[uint16][]flushWaiter{},
		flushTags: map[uint16]bool{},
	}
	go func() {
		defer close(c.srvDone)
		if err := srv.Handle(&p9Requests{c: c}, &p9Replies{c: c}); err != nil {
			c.log("9p server: %v", err)
		}
	}()
	return c
}

func (c *p9Conn) log(format string, a ...any) {
	if c.logf != nil {
		c.logf(format, a...)
	}
}

// submit sends msg, a whole T-message, whose reply goes to reply. It
// blocks while p9Queued requests wait for the server, until stop closes.
func (c *p9Conn) submit(msg []byte, reply func([]byte), stop <-chan struct{}) int {
	typ, tag := msg[4], binary.LittleEndian.Uint16(msg[5:])
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return submitStopped
	}
	if _, dup := c.waiting[tag]; dup {
		c.mu.Unlock()
		c.log("request with tag %d, already in use", tag)
		return submitRefused
	}
	if typ == p9Tflush {
		rflush := p9Header(p9HeaderSize, p9Rflush, tag)
		if len(msg) < p9HeaderSize+2 {
			c.mu.Unlock()
			reply(p9Error(tag, uint32(unix.EINVAL)))
			return submitted
		}
		old := binary.LittleEndian.Uint16(msg[7:])
		if _, ok := c.waiting[old]; !ok || old == tag {
			c.mu.Unlock()
			reply(rflush)
			return submitted
		}
		c.waiting[tag] = reply
		c.flushTags[tag] = true
		c.flushes[old] = append(c.flushes[old], flushWaiter{tag: tag, reply: reply})
		c.mu.Unlock()
		return submitted
	}
	c.waiting[tag] = reply
	c.mu.Unlock()
	select {
	case c.reqs <- msg:
		return submitted
	case <-stop:
		return submitStopped
	case <-c.done:
		return submitStopped
	}
}

// deliver hands the server's reply msg to its request's taker, then
// answers the flushes that waited for it.
func (c *p9Conn) deliver(msg []byte) {
	tag := binary.LittleEndian.Uint16(msg[5:])
	c.mu.Lock()
	if c.flushTags[tag] {
		c.mu.Unlock()
		c.log("reply with tag %d, a flush's, which the server never saw", tag)
		return
	}
	take, ok := c.waiting[tag]
	delete(c.waiting, tag)
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return // the device reset: the reply has nowhere to go
	}
	if !ok {
		// A reply to a request the server could not parse carries
		// no usable tag; that request's chain stays with the device
		// until the driver resets it.
		c.log("reply with tag %d, for no request", tag)
		return
	}
	take(msg)
	c.flushed(tag)
}

// flushed answers the flushes waiting for tag, and those waiting for
// them.
func (c *p9Conn) flushed(tag uint16) {
	c.mu.Lock()
	fs := c.flushes[tag]
	delete(c.flushes, tag)
	for _, f := range fs {
		delete(c.waiting, f.tag)
		delete(c.flushTags, f.tag)
	}
	c.mu.Unlock()
	for _, f := range fs {
		f.reply(p9Header(p9HeaderSize, p9Rflush, f.tag))
		c.flushed(f.tag)
	}
}

// close ends the connection: the server reads EOF, finishes the requests
// it has and closes its files; close waits for that. Replies after it
// are dropped.
func (c *p9Conn) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.waiting = map[uint16]func([]byte){}
	c.flushes = map[uint16][]flushWaiter{}
	c.flushTags = map[uint16]bool{}
	c.mu.Unlock()
	close(c.done)
	<-c.srvDone
}

// p9Requests is the server's side of the requests: a stream of the
// T-messages submitted, until the connection closes.
type p9Requests struct {
	c   *p9Conn
	cur []byte
}

// Read implements io.Reader. Once the connection closed it hands out
// nothing more, not even the rest of a message it started: a reset's
// wait for the server does not depend on what the server still reads.
func (t *p9Requests) Read(b []byte) (int, error) {
	select {
	case <-t.c.done:
		return 0, io.EOF
	default:
	}
	if len(t.cur) == 0 {
		select {
		case t.cur = <-t.c.reqs:
		case <-t.c.done:
			return 0, io.EOF
		}
	}
	n := copy(b, t.cur)
	t.cur = t.cur[n:]
	return n, nil
}

// Close implements io.Closer.
func (t *p9Requests) Close() error { return nil }

// Done returns a channel closed when the connection ends (a reset): a
// server in another process cuts its own waits short then.
func (t *p9Requests) Done() <-chan struct{} { return t.c.done }

// p9Replies is the server's side of the replies. The server writes each
// reply whole (in one or more Writes, none interleaved), so the writer
// cuts the stream into messages by their size field.
type p9Replies struct {
	c   *p9Conn
	buf []byte
}

// Write implements io.Writer.
func (w *p9Replies) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	for len(w.buf) >= p9HeaderSize {
		size := binary.LittleEndian.Uint32(w.buf)
		// The server may be another process the guest took over
		// (vessel-share): a size it makes up must not make the
		// device hold more than one message's worth.
		if size < p9HeaderSize || size > p9MaxMessage {
			return 0, fmt.Errorf("virtio 9p: server wrote a reply of %d bytes", size)
		}
		if uint64(len(w.buf)) < uint64(size) {
			break
		}
		w.c.deliver(w.buf[:size])
		w.buf = w.buf[size:]
	}
	if len(w.buf) == 0 {
		w.buf = nil
	}
	return len(b), nil
}

// Close implements io.Closer.
func (w *p9Replies) Close() error { return nil }
