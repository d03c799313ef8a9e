package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

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
	// p9Rlerror is the type of an error reply (9P2000.L).
	p9Rlerror = 7
)

// P9Server serves one 9P connection: requests arrive on t and replies go
// to w, each a whole 9P message, replies in any order. Handle returns
// when t reaches EOF and every request has its reply.
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
// any order and complete their chains by tag.
type P9 struct {
	tag    []byte
	config []byte
	srv    P9Server
	logf   func(string, ...any)

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
	r := &p9Run{
		q:       q,
		logf:    p.logf,
		reqs:    make(chan []byte, p9Queued),
		done:    make(chan struct{}),
		waiting: make(map[uint16]*Chain),
	}
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		p.srv.Handle(&p9Requests{r: r}, &p9Replies{r: r})
	}()
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
	reqs chan []byte // T-messages for the server, in queue order
	done chan struct{}
	wg   sync.WaitGroup

	// mu guards the queue (popped by serve, pushed by the server's
	// goroutines), the chains waiting for replies, and stopped.
	mu      sync.Mutex
	waiting map[uint16]*Chain // by 9P tag
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

// request reads one T-message and passes it to the server. It reports
// false when the run stopped.
func (r *p9Run) request(c *Chain) bool {
	var hdr [p9HeaderSize]byte
	rd := c.Reader()
	if err := rd.ReadFull(hdr[:]); err != nil {
		r.log("request of %d readable bytes, below a 9P header", c.ReadableLen())
		r.complete(c, 0)
		return true
	}
	size := binary.LittleEndian.Uint32(hdr[0:])
	tag := binary.LittleEndian.Uint16(hdr[5:])
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
	r.mu.Lock()
	_, dup := r.waiting[tag]
	if !dup {
		r.waiting[tag] = c
	}
	r.mu.Unlock()
	if dup {
		r.log("request with tag %d, already in use", tag)
		r.complete(c, 0)
		return true
	}
	select {
	case r.reqs <- msg:
		return true
	case <-r.done:
		return false
	}
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

// reply completes the chain waiting for msg's tag with msg.
func (r *p9Run) reply(msg []byte) {
	tag := binary.LittleEndian.Uint16(msg[5:])
	r.mu.Lock()
	c, ok := r.waiting[tag]
	delete(r.waiting, tag)
	r.mu.Unlock()
	if !ok {
		// A reply to a request the server could not parse carries
		// no usable tag; that request's chain stays with the device
		// until the driver resets it.
		r.log("reply with tag %d, for no request", tag)
		return
	}
	w := c.Writer()
	if uint64(len(msg)) > w.Remaining() {
		// The driver left too little room: an error reply instead.
		r.log("reply of %d bytes for a chain of %d writable bytes", len(msg), w.Remaining())
		msg = p9Error(tag, uint32(unix.ENOBUFS))
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
	b := make([]byte, 11)
	binary.LittleEndian.PutUint32(b, 11)
	b[4] = p9Rlerror
	binary.LittleEndian.PutUint16(b[5:], tag)
	binary.LittleEndian.PutUint32(b[7:], errno)
	return b
}

// p9Requests is the server's side of the requests: a stream of the
// T-messages the driver queued, until the run stops.
type p9Requests struct {
	r   *p9Run
	cur []byte
}

// Read implements io.Reader.
func (t *p9Requests) Read(b []byte) (int, error) {
	if len(t.cur) == 0 {
		select {
		case t.cur = <-t.r.reqs:
		case <-t.r.done:
			return 0, io.EOF
		}
	}
	n := copy(b, t.cur)
	t.cur = t.cur[n:]
	return n, nil
}

// Close implements io.Closer.
func (t *p9Requests) Close() error { return nil }

// p9Replies is the server's side of the replies. The server writes each
// reply whole (in one or more Writes, none interleaved), so the writer
// cuts the stream into messages by their size field.
type p9Replies struct {
	r   *p9Run
	buf []byte
}

// Write implements io.Writer.
func (w *p9Replies) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	for len(w.buf) >= p9HeaderSize {
		size := binary.LittleEndian.Uint32(w.buf)
		if size < p9HeaderSize {
			return 0, fmt.Errorf("virtio 9p: server wrote a reply of %d bytes", size)
		}
		if uint64(len(w.buf)) < uint64(size) {
			break
		}
		w.r.reply(w.buf[:size])
		w.buf = w.buf[size:]
	}
	if len(w.buf) == 0 {
		w.buf = nil
	}
	return len(b), nil
}

// Close implements io.Closer.
func (w *p9Replies) Close() error { return nil }
