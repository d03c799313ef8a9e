package virtio

import (
	"bytes"
	"encoding/binary"
	"io"
	"sync"
	"testing"

	"github.com/hugelgupf/p9/p9"

	"github.com/vesselvm/vessel/devices"
	"github.com/vesselvm/vessel/devices/share"
)

// msg9p encodes a 9P message: size[4] type[1] tag[2] body.
func msg9p(typ byte, tag uint16, body []byte) []byte {
	b := make([]byte, 7, 7+len(body))
	binary.LittleEndian.PutUint32(b, uint32(7+len(body)))
	b[4] = typ
	binary.LittleEndian.PutUint16(b[5:], tag)
	return append(b, body...)
}

// pairServer answers requests two at a time, the second first, with
// type+1, the same tag and the body reversed. A request of type 0
// is answered alone at once.
type pairServer struct {
	mu      sync.Mutex
	handled int
	ended   chan struct{}
}

func (s *pairServer) Handle(t io.ReadCloser, w io.WriteCloser) error {
	defer close(s.ended)
	var held []byte
	for {
		var hdr [7]byte
		if _, err := io.ReadFull(t, hdr[:]); err != nil {
			return nil
		}
		body := make([]byte, binary.LittleEndian.Uint32(hdr[:])-7)
		if _, err := io.ReadFull(t, body); err != nil {
			return nil
		}
		rev := make([]byte, len(body))
		for i := range body {
			rev[len(body)-1-i] = body[i]
		}
		reply := msg9p(hdr[4]+1, binary.LittleEndian.Uint16(hdr[5:]), rev)
		s.mu.Lock()
		s.handled++
		s.mu.Unlock()
		if hdr[4] == 0 {
			w.Write(reply)
			continue
		}
		if held == nil {
			held = reply
			continue
		}
		// Written in pieces, as p9's server does.
		w.Write(reply[:4])
		w.Write(reply[4:])
		w.Write(held)
		held = nil
	}
}

func newP9Device(t *testing.T, srv P9Server) (*MMIO, *driver, *logRecorder) {
	t.Helper()
	mem := newTestMem(t)
	logs := &logRecorder{}
	dev, err := NewP9("hostshare", srv, logs.logf)
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMMIO(dev, mem, &devices.CountingInterrupt{}, logs.logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if rd(m, regDeviceID) != TypeP9 {
		t.Fatal("device id")
	}
	d := newDriver(t, mem)
	startDriver(t, m, Feature9PMountTag, d)
	return m, d, logs
}

func TestP9Config(t *testing.T) {
	m, _, _ := newP9Device(t, &pairServer{ended: make(chan struct{})})
	cfg := make([]byte, 16)
	for i := range cfg {
		b := make([]byte, 1)
		m.Read(regConfig+uint64(i), b)
		cfg[i] = b[0]
	}
	if binary.LittleEndian.Uint16(cfg) != 9 || string(cfg[2:11]) != "hostshare" || cfg[11] != 0 {
		t.Errorf("config % x", cfg)
	}
	for _, tag := range []string{"", string(make([]byte, 257))} {
		if _, err := NewP9(tag, nil, nil); err == nil {
			t.Errorf("tag of %d bytes accepted", len(tag))
		}
	}
}

// TestP9Transport: replies complete their own chains whatever their
// order, across descriptors; broken requests are returned empty and do
// not stop the device.
func TestP9Transport(t *testing.T) {
	srv := &pairServer{ended: make(chan struct{})}
	m, d, logs := newP9Device(t, srv)
	type req struct {
		head uint16
		out  uint64
		body string
	}
	send := func(tag uint16, body string) req {
		msg := msg9p(10, tag, []byte(body))
		// The header and the body in separate readable descriptors,
		// the reply split over two writable ones.
		head, addrs := d.chain(seg{data: msg[:7]}, seg{data: msg[7:]}, seg{n: 5, write: true}, seg{n: 64, write: true})
		d.offer(head)
		wr(m, RegQueueNotify, 0)
		return req{head, addrs[2], body}
	}
	a := send(1, "first")
	b := send(2, "second!")
	waitFor(t, "two replies", func() bool { return d.usedIdx() == 2 })
	// The second was answered first.
	for i, r := range []req{b, a} {
		id, n := d.used(uint16(i))
		if id != uint32(r.head) || n != uint32(7+len(r.body)) {
			t.Fatalf("used %d: head %d, %d bytes; want head %d", i, id, n, r.head)
		}
	}
	got := make([]byte, 7+len(b.body))
	d.mem.ReadAt(got[:5], b.out)
	d.mem.ReadAt(got[5:], b.out+16) // the next allocation, 16-aligned
	if want := msg9p(11, 2, []byte("!dnoces")); !bytes.Equal(got, want) {
		t.Errorf("reply % x, want % x", got, want)
	}

	// Broken requests: shorter than a header, a size beyond the chain,
	// a tag already waiting.
	c := send(3, "held") // waits for a partner
	for _, msg := range [][]byte{
		{1, 2, 3},
		func() []byte { m := msg9p(10, 4, nil); m[0] = 200; return m }(),
		msg9p(10, 3, []byte("duplicate")),
	} {
		head, _ := d.chain(seg{data: msg}, seg{n: 64, write: true})
		d.offer(head)
		wr(m, RegQueueNotify, 0)
	}
	waitFor(t, "three empty replies", func() bool { return d.usedIdx() == 5 })
	for i := uint16(2); i < 5; i++ {
		if _, n := d.used(i); n != 0 {
			t.Errorf("broken request %d got %d bytes", i, n)
		}
	}
	if len(logs.all()) < 3 {
		t.Errorf("logged %q", logs.all())
	}
	// A reply that does not fit becomes an error reply.
	head, addrs := d.chain(seg{data: msg9p(10, 5, []byte("a long body here"))}, seg{n: 12, write: true})
	d.offer(head)
	wr(m, RegQueueNotify, 0)
	waitFor(t, "the pair's replies", func() bool { return d.usedIdx() == 7 })
	id, n := d.used(5)
	e := make([]byte, 11)
	d.mem.ReadAt(e, addrs[1])
	if id != uint32(head) || n != 11 || e[4] != p9Rlerror || binary.LittleEndian.Uint16(e[5:]) != 5 {
		t.Errorf("no-room reply: head %d, %d bytes % x", id, n, e)
	}
	if id, _ := d.used(6); id != uint32(c.head) {
		t.Errorf("held request: used head %d, want %d", id, c.head)
	}
	if rd(m, regStatus)&StatusNeedsReset != 0 {
		t.Error("the device failed")
	}

	// A reset with a request waiting ends the connection.
	send(6, "never answered")
	waitFor(t, "the request read", func() bool { srv.mu.Lock(); defer srv.mu.Unlock(); return srv.handled == 5 })
	wr(m, regStatus, 0)
	<-srv.ended
	if d.usedIdx() != 7 {
		t.Error("a chain was used after the reset")
	}
}

// TestP9Server: the transport in front of p9's server and a share,
// negotiating the protocol version as Linux's client does first.
func TestP9Server(t *testing.T) {
	sh, err := share.New(t.TempDir(), true, share.NewFDBudget(1024))
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	m, d, _ := newP9Device(t, p9.NewServer(sh))
	body := binary.LittleEndian.AppendUint32(nil, 512000)
	body = binary.LittleEndian.AppendUint16(body, 8)
	body = append(body, "9P2000.L"...)
	head, addrs := d.chain(seg{data: msg9p(100, 0xFFFF, body)}, seg{n: 64, write: true}) // Tversion
	d.offer(head)
	wr(m, RegQueueNotify, 0)
	waitFor(t, "Rversion", func() bool { return d.usedIdx() == 1 })
	_, n := d.used(0)
	got := make([]byte, n)
	d.mem.ReadAt(got, addrs[1])
	// p9 caps msize at 4 MiB, so it keeps ours.
	if want := msg9p(101, 0xFFFF, body); !bytes.Equal(got, want) {
		t.Errorf("Rversion % x, want % x", got, want)
	}
}

// TestP9Flush: the transport answers Tflush itself, after the reply of
// the request it flushes, and at once for a tag with no request waiting
// (its own tag included, which would block p9's server for good).
func TestP9Flush(t *testing.T) {
	srv := &pairServer{ended: make(chan struct{})}
	m, d, _ := newP9Device(t, srv)
	send := func(msg []byte) uint16 {
		head, _ := d.chain(seg{data: msg}, seg{n: 64, write: true})
		d.offer(head)
		wr(m, RegQueueNotify, 0)
		return head
	}
	flush := func(tag, old uint16) []byte { return msg9p(p9Tflush, tag, binary.LittleEndian.AppendUint16(nil, old)) }
	a := send(msg9p(10, 1, []byte("a"))) // held by the server
	f2 := send(flush(2, 1))              // waits for a's reply
	f3 := send(flush(3, 3))              // its own tag: at once
	f4 := send(flush(4, 2))              // waits for the flush f2
	waitFor(t, "the self-flush", func() bool { return d.usedIdx() == 1 })
	b := send(msg9p(10, 5, []byte("b"))) // the server answers b, then a
	waitFor(t, "all replies", func() bool { return d.usedIdx() == 5 })
	for i, want := range []struct {
		head uint16
		n    uint32
	}{{f3, 7}, {b, 8}, {a, 8}, {f2, 7}, {f4, 7}} {
		if id, n := d.used(uint16(i)); id != uint32(want.head) || n != want.n {
			t.Errorf("used %d: head %d, %d bytes; want head %d, %d bytes", i, id, n, want.head, want.n)
		}
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.handled != 2 {
		t.Errorf("the server got %d requests, want 2 (no flush)", srv.handled)
	}
}

// TestP9Served: a device the driver only set up has served nothing; one
// request, well-formed or not, marks it served, and a reset does not
// clear that (the guest may keep its mount across one).
func TestP9Served(t *testing.T) {
	tversion := func() []byte {
		body := binary.LittleEndian.AppendUint32(nil, 512000)
		body = binary.LittleEndian.AppendUint16(body, 8)
		return msg9p(100, 0xFFFF, append(body, "9P2000.L"...))
	}
	for _, tc := range []struct {
		name string
		req  []byte // nil: no request
		want bool
	}{
		{"probed only", nil, false},
		{"Tversion", tversion(), true},
		{"shorter than a header", []byte{1, 2, 3}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sh, err := share.New(t.TempDir(), true, share.NewFDBudget(1024))
			if err != nil {
				t.Fatal(err)
			}
			defer sh.Close()
			m, d, _ := newP9Device(t, p9.NewServer(sh))
			dev := m.Device().(*P9)
			if dev.Tag() != "hostshare" {
				t.Errorf("Tag = %q", dev.Tag())
			}
			if dev.Served() {
				t.Fatal("Served before any request")
			}
			if tc.req != nil {
				head, _ := d.chain(seg{data: tc.req}, seg{n: 64, write: true})
				d.offer(head)
				wr(m, RegQueueNotify, 0)
				waitFor(t, "the reply", func() bool { return d.usedIdx() == 1 })
			}
			if got := dev.Served(); got != tc.want {
				t.Fatalf("Served = %v, want %v", got, tc.want)
			}
			wr(m, regStatus, 0) // the driver's reset
			if got := dev.Served(); got != tc.want {
				t.Errorf("after a reset, Served = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestP9RepliesBounded: a server (vessel-share, which the guest may have
// taken over) that announces a reply larger than any message the device
// takes gets an error at once, and the device holds none of what
// follows.
func TestP9RepliesBounded(t *testing.T) {
	c := newP9Conn(serverFunc(func(io.ReadCloser, io.WriteCloser) error { return nil }), nil)
	defer c.close()
	w := &p9Replies{c: c}
	hdr := binary.LittleEndian.AppendUint32(nil, 64<<20)
	hdr = append(hdr, 117, 1, 0) // Rread, tag 1
	if _, err := w.Write(hdr); err == nil {
		t.Fatalf("a reply announced at 64 MiB was taken (%d bytes held)", len(w.buf))
	}
	ok := binary.LittleEndian.AppendUint32(nil, p9MaxMessage)
	if _, err := (&p9Replies{c: c}).Write(append(ok, 117, 2, 0)); err != nil {
		t.Errorf("a reply of the largest size: %v", err)
	}
}

// serverFunc is a P9Server made of a function.
type serverFunc func(io.ReadCloser, io.WriteCloser) error

func (f serverFunc) Handle(t io.ReadCloser, w io.WriteCloser) error { return f(t, w) }

// TestP9ReplyToFlushTag: the server (vessel-share, possibly the guest's)
// never sees a Tflush, yet p9Conn keeps the flush's taker in waiting under
// the flush's tag, so a reply the server makes up with that tag completes
// the flush's chain, and the flushed request's reply then completes it
// again (flushed answers every flush waiter): one chain pushed twice on
// the used ring.
func TestP9ReplyToFlushTag(t *testing.T) {
	c := newP9Conn(serverFunc(func(io.ReadCloser, io.WriteCloser) error { return nil }), nil)
	defer c.close()
	stop := make(chan struct{})
	flushReplies := 0
	if c.submit(msg9p(10, 1, nil), func([]byte) {}, stop) != submitted {
		t.Fatal("request not submitted")
	}
	if c.submit(msg9p(p9Tflush, 2, []byte{1, 0}), func([]byte) { flushReplies++ }, stop) != submitted {
		t.Fatal("flush not submitted")
	}
	w := &p9Replies{c: c}
	w.Write(msg9p(11, 2, nil)) // a reply to the Tflush's tag, which the server never saw
	w.Write(msg9p(11, 1, nil)) // the flushed request's reply
	if flushReplies != 1 {
		t.Errorf("the Tflush's chain was completed %d times, want once", flushReplies)
	}
}

// TestP9RequestsEndAtReset: once the connection closes (a device reset),
// the server is handed no more requests. p9Requests.Read returns the
// rest of a message it started, and picks queued ones over done at
// random, so remote.Server.Handle goes on writing them to the helper
// after the reset, each 32 KiB write bounded by stallWait on its own: a
// helper that takes them just in time would hold the reset for minutes.
// (Found by a review of da2b9d5.)
func TestP9RequestsEndAtReset(t *testing.T) {
	got := make(chan io.Reader, 1)
	release := make(chan struct{})
	c := newP9Conn(serverFunc(func(r io.ReadCloser, _ io.WriteCloser) error {
		got <- r
		<-release
		return nil
	}), nil)
	stop := make(chan struct{})
	for tag := uint16(1); tag <= p9Queued; tag++ {
		if c.submit(msg9p(10, tag, make([]byte, 64<<10)), func([]byte) {}, stop) != submitted {
			t.Fatal("request not submitted")
		}
	}
	r := <-got
	if _, err := io.ReadFull(r, make([]byte, p9HeaderSize)); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() { c.close(); close(closed) }()
	<-c.done
	n := 0
	buf := make([]byte, 32<<10)
	for {
		k, err := r.Read(buf)
		n += k
		if err != nil {
			break
		}
	}
	close(release)
	<-closed
	if n > 0 {
		t.Errorf("after the reset, the server was still handed %d bytes of requests", n)
	}
}
