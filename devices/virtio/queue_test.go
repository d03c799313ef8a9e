package virtio

import (
	"bytes"
	"errors"
	"io"
	"math"
	"testing"
)

func TestQueueDirectChain(t *testing.T) {
	mem := newTestMem(t)
	d := newDriver(t, mem)
	q := d.queue(false)
	head, addrs := d.chain(seg{data: []byte("hello, ")}, seg{data: []byte("device")}, seg{n: 4, write: true}, seg{n: 8, write: true})
	d.offer(head)

	c, err := q.Pop()
	if err != nil || c == nil {
		t.Fatalf("Pop = %v, %v", c, err)
	}
	if c.ReadableLen() != 13 || c.WritableLen() != 12 {
		t.Errorf("lengths %d/%d", c.ReadableLen(), c.WritableLen())
	}
	got, err := io.ReadAll(c.Reader())
	if err != nil || string(got) != "hello, device" {
		t.Errorf("read %q, %v", got, err)
	}
	w := c.Writer()
	if n, err := w.Write([]byte("0123456789")); n != 10 || err != nil {
		t.Errorf("write %d, %v", n, err)
	}
	if _, err := w.Write([]byte("abc")); !errors.Is(err, ErrShortChain) {
		t.Errorf("write past the chain: %v", err)
	}
	b := make([]byte, 8)
	mem.ReadAt(b, addrs[3])
	if string(b) != "456789ab" {
		t.Errorf("second writable buffer holds %q", b)
	}
	if err := q.Push(c.Head, w.Written()); err != nil {
		t.Fatal(err)
	}
	if id, n := d.used(0); id != uint32(head) || n != 12 || d.usedIdx() != 1 {
		t.Errorf("used entry %d/%d idx %d", id, n, d.usedIdx())
	}
	if c, err := q.Pop(); c != nil || err != nil {
		t.Errorf("empty queue popped %v, %v", c, err)
	}
}

func TestQueueIndirect(t *testing.T) {
	mem := newTestMem(t)
	d := newDriver(t, mem)
	q := d.queue(true)
	head, _ := d.indirect(seg{data: []byte("abc")}, seg{data: []byte("def")}, seg{n: 5, write: true})
	d.offer(head)
	c, err := q.Pop()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(c.Reader())
	if string(got) != "abcdef" || c.WritableLen() != 5 || len(c.Descs) != 3 {
		t.Errorf("indirect chain read %q, %d writable, %d descriptors", got, c.WritableLen(), len(c.Descs))
	}
}

func TestWriterBuffersUnconsume(t *testing.T) {
	mem := newTestMem(t)
	d := newDriver(t, mem)
	q := d.queue(false)
	head, _ := d.chain(seg{n: 4, write: true}, seg{n: 4, write: true})
	d.offer(head)
	c, _ := q.Pop()
	w := c.Writer()
	bufs, err := w.Buffers(6)
	if err != nil || len(bufs) != 2 || len(bufs[0]) != 4 || len(bufs[1]) != 2 {
		t.Fatalf("Buffers = %v, %v", bufs, err)
	}
	w.Unconsume(3) // the host filled only 3 of 6
	if w.Written() != 3 || w.Remaining() != 5 {
		t.Errorf("after Unconsume: written %d remaining %d", w.Written(), w.Remaining())
	}
	w.Write([]byte("XYZZY"))
	if w.Written() != 8 {
		t.Errorf("written %d", w.Written())
	}
}

// TestQueueMalformed drives the queue with hand-built hostile rings: each
// must fail with ErrQueue, never panic or loop.
func TestQueueMalformed(t *testing.T) {
	cases := []struct {
		name  string
		build func(d *driver) // writes descriptors and offers a head
	}{
		{"loop", func(d *driver) {
			d.writeDesc(testDesc, 0, bufBase, 8, descFNext, 1)
			d.writeDesc(testDesc, 1, bufBase, 8, descFNext, 0)
			d.offer(0)
		}},
		{"self loop", func(d *driver) {
			d.writeDesc(testDesc, 3, bufBase, 8, descFNext, 3)
			d.offer(3)
		}},
		{"next out of table", func(d *driver) {
			d.writeDesc(testDesc, 0, bufBase, 8, descFNext, 999)
			d.offer(0)
		}},
		{"head out of table", func(d *driver) { d.offer(testQSize) }},
		{"buffer past RAM", func(d *driver) {
			d.writeDesc(testDesc, 0, testRAM-4, 8, 0, 0)
			d.offer(0)
		}},
		{"buffer address overflow", func(d *driver) {
			d.writeDesc(testDesc, 0, math.MaxUint64-2, 8, 0, 0)
			d.offer(0)
		}},
		{"readable after writable", func(d *driver) {
			d.writeDesc(testDesc, 0, bufBase, 8, descFWrite|descFNext, 1)
			d.writeDesc(testDesc, 1, bufBase, 8, 0, 0)
			d.offer(0)
		}},
		{"zero-length writable then readable", func(d *driver) {
			d.writeDesc(testDesc, 0, bufBase, 0, descFWrite|descFNext, 1)
			d.writeDesc(testDesc, 1, bufBase, 8, 0, 0)
			d.offer(0)
		}},
		{"indirect length not multiple of 16", func(d *driver) {
			d.writeDesc(testDesc, 0, testIndir, 24, descFIndirect, 0)
			d.offer(0)
		}},
		{"indirect empty", func(d *driver) {
			d.writeDesc(testDesc, 0, testIndir, 0, descFIndirect, 0)
			d.offer(0)
		}},
		{"indirect table past RAM", func(d *driver) {
			d.writeDesc(testDesc, 0, testRAM-16, 32, descFIndirect, 0)
			d.offer(0)
		}},
		{"nested indirect", func(d *driver) {
			d.writeDesc(testIndir, 0, testIndir, 16, descFIndirect, 0)
			d.writeDesc(testDesc, 0, testIndir, 16, descFIndirect, 0)
			d.offer(0)
		}},
		{"indirect loop", func(d *driver) {
			d.writeDesc(testIndir, 0, bufBase, 8, descFNext, 1)
			d.writeDesc(testIndir, 1, bufBase, 8, descFNext, 0)
			d.writeDesc(testDesc, 0, testIndir, 32, descFIndirect, 0)
			d.offer(0)
		}},
		{"indirect with next", func(d *driver) {
			d.writeDesc(testIndir, 0, bufBase, 8, 0, 0)
			d.writeDesc(testDesc, 0, testIndir, 16, descFIndirect|descFNext, 1)
			d.offer(0)
		}},
		{"indirect after direct", func(d *driver) {
			d.writeDesc(testIndir, 0, bufBase, 8, 0, 0)
			d.writeDesc(testDesc, 0, bufBase, 8, descFNext, 1)
			d.writeDesc(testDesc, 1, testIndir, 16, descFIndirect, 0)
			d.offer(0)
		}},
		{"available index runs ahead", func(d *driver) {
			d.put16(testAvail+2, testQSize+1)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mem := newTestMem(t)
			d := newDriver(t, mem)
			q := d.queue(false)
			tc.build(d)
			c, err := q.Pop()
			if !errors.Is(err, ErrQueue) {
				t.Fatalf("Pop = %v, %v; want ErrQueue", c, err)
			}
		})
	}
}

func TestQueueConfigValidate(t *testing.T) {
	mem := newTestMem(t)
	good := QueueConfig{Size: 16, Desc: testDesc, Driver: testAvail, Device: testUsed}
	if err := good.Validate(mem, 256); err != nil {
		t.Fatal(err)
	}
	bad := map[string]QueueConfig{
		"size 0":           {Size: 0, Desc: testDesc, Driver: testAvail, Device: testUsed},
		"size 3":           {Size: 3, Desc: testDesc, Driver: testAvail, Device: testUsed},
		"above max":        {Size: 512, Desc: testDesc, Driver: testAvail, Device: testUsed},
		"desc misaligned":  {Size: 16, Desc: testDesc + 8, Driver: testAvail, Device: testUsed},
		"used misaligned":  {Size: 16, Desc: testDesc, Driver: testAvail, Device: testUsed + 2},
		"desc past RAM":    {Size: 16, Desc: testRAM - 16, Driver: testAvail, Device: testUsed},
		"avail overflow":   {Size: 16, Desc: testDesc, Driver: math.MaxUint64 - 1, Device: testUsed},
		"used outside RAM": {Size: 256, Desc: testDesc, Driver: testAvail, Device: 1 << 40},
	}
	for name, c := range bad {
		if err := c.Validate(mem, 256); !errors.Is(err, ErrQueue) {
			t.Errorf("%s: Validate = %v, want ErrQueue", name, err)
		}
	}
}

func TestNeedsInterrupt(t *testing.T) {
	mem := newTestMem(t)
	d := newDriver(t, mem)
	// Without EVENT_IDX: the NO_INTERRUPT flag decides.
	q := d.queue(false)
	if need, _ := q.NeedsInterrupt(); !need {
		t.Error("no interrupt without NO_INTERRUPT")
	}
	d.put16(testAvail, availFNoInterrupt)
	if need, _ := q.NeedsInterrupt(); need {
		t.Error("interrupt despite NO_INTERRUPT")
	}

	// With EVENT_IDX: used_event (after the avail ring) decides.
	d.put16(testAvail, 0)
	q = d.queue(true)
	usedEvent := uint64(testAvail + 4 + 2*testQSize)
	push := func(n int) {
		for i := 0; i < n; i++ {
			q.Push(0, 0)
		}
	}
	push(1)
	if need, _ := q.NeedsInterrupt(); !need {
		t.Error("first interrupt suppressed")
	}
	d.put16(usedEvent, 3) // interrupt when entry 3 is used
	push(1)               // used idx 2: entry 1 used
	if need, _ := q.NeedsInterrupt(); need {
		t.Error("interrupt before used_event")
	}
	push(2) // used idx 4: entry 3 used
	if need, _ := q.NeedsInterrupt(); !need {
		t.Error("no interrupt at used_event")
	}
	// EnableNotify publishes avail_event.
	d.offer(0)
	q.Pop()
	q.EnableNotify()
	if v, _ := mem.Uint16(testUsed + 4 + 8*testQSize); v != 1 {
		t.Errorf("avail_event = %d, want 1", v)
	}
}

func TestReaderBuffers(t *testing.T) {
	mem := newTestMem(t)
	d := newDriver(t, mem)
	q := d.queue(false)
	head, _ := d.chain(seg{data: []byte("abcd")}, seg{data: []byte("efgh")})
	d.offer(head)
	c, _ := q.Pop()
	r := c.Reader()
	hdr := make([]byte, 2)
	if err := r.ReadFull(hdr); err != nil || string(hdr) != "ab" {
		t.Fatalf("ReadFull %q %v", hdr, err)
	}
	bufs, _ := r.Buffers(100)
	if got := bytes.Join(bufs, nil); string(got) != "cdefgh" || r.Remaining() != 0 {
		t.Errorf("buffers %q, remaining %d", got, r.Remaining())
	}
	if err := r.ReadFull(hdr); !errors.Is(err, ErrShortChain) {
		t.Errorf("ReadFull past the end: %v", err)
	}
}
