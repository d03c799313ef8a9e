package virtio

import (
	"bytes"
	"errors"
	"io"
	"math"
	"testing"

	"github.com/vesselvm/vessel/guestmem"
)

func TestQueueDirectChain(t *testing.T) {
	mem := newTestMem(t)
	d := newDriver(t, mem)
	q := d.queue(0)
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
	q := d.queue(FeatureEventIdx | FeatureIndirectDesc)
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
	q := d.queue(0)
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
		name    string
		build   func(d *driver) // writes descriptors and offers a head
		noIndir bool            // FeatureIndirectDesc not negotiated
	}{
		{name: "loop", build: func(d *driver) {
			d.writeDesc(testDesc, 0, bufBase, 8, descFNext, 1)
			d.writeDesc(testDesc, 1, bufBase, 8, descFNext, 0)
			d.offer(0)
		}},
		{name: "self loop", build: func(d *driver) {
			d.writeDesc(testDesc, 3, bufBase, 8, descFNext, 3)
			d.offer(3)
		}},
		{name: "next out of table", build: func(d *driver) {
			d.writeDesc(testDesc, 0, bufBase, 8, descFNext, 999)
			d.offer(0)
		}},
		{name: "head out of table", build: func(d *driver) { d.offer(testQSize) }},
		{name: "buffer past RAM", build: func(d *driver) {
			d.writeDesc(testDesc, 0, testRAM-4, 8, 0, 0)
			d.offer(0)
		}},
		{name: "buffer address overflow", build: func(d *driver) {
			d.writeDesc(testDesc, 0, math.MaxUint64-2, 8, 0, 0)
			d.offer(0)
		}},
		{name: "readable after writable", build: func(d *driver) {
			d.writeDesc(testDesc, 0, bufBase, 8, descFWrite|descFNext, 1)
			d.writeDesc(testDesc, 1, bufBase, 8, 0, 0)
			d.offer(0)
		}},
		{name: "zero-length writable then readable", build: func(d *driver) {
			d.writeDesc(testDesc, 0, bufBase, 0, descFWrite|descFNext, 1)
			d.writeDesc(testDesc, 1, bufBase, 8, 0, 0)
			d.offer(0)
		}},
		{name: "indirect length not multiple of 16", build: func(d *driver) {
			d.writeDesc(testDesc, 0, testIndir, 24, descFIndirect, 0)
			d.offer(0)
		}},
		{name: "indirect empty", build: func(d *driver) {
			d.writeDesc(testDesc, 0, testIndir, 0, descFIndirect, 0)
			d.offer(0)
		}},
		{name: "indirect table past RAM", build: func(d *driver) {
			d.writeDesc(testDesc, 0, testRAM-16, 32, descFIndirect, 0)
			d.offer(0)
		}},
		{name: "nested indirect", build: func(d *driver) {
			d.writeDesc(testIndir, 0, testIndir, 16, descFIndirect, 0)
			d.writeDesc(testDesc, 0, testIndir, 16, descFIndirect, 0)
			d.offer(0)
		}},
		{name: "indirect loop", build: func(d *driver) {
			d.writeDesc(testIndir, 0, bufBase, 8, descFNext, 1)
			d.writeDesc(testIndir, 1, bufBase, 8, descFNext, 0)
			d.writeDesc(testDesc, 0, testIndir, 32, descFIndirect, 0)
			d.offer(0)
		}},
		{name: "indirect with next", build: func(d *driver) {
			d.writeDesc(testIndir, 0, bufBase, 8, 0, 0)
			d.writeDesc(testDesc, 0, testIndir, 16, descFIndirect|descFNext, 1)
			d.offer(0)
		}},
		{name: "indirect after direct", build: func(d *driver) {
			d.writeDesc(testIndir, 0, bufBase, 8, 0, 0)
			d.writeDesc(testDesc, 0, bufBase, 8, descFNext, 1)
			d.writeDesc(testDesc, 1, testIndir, 16, descFIndirect, 0)
			d.offer(0)
		}},
		{name: "available index runs ahead", build: func(d *driver) {
			d.put16(testAvail+2, testQSize+1)
		}},
		{name: "indirect not negotiated", noIndir: true, build: func(d *driver) {
			d.writeDesc(testIndir, 0, bufBase, 8, 0, 0)
			d.writeDesc(testDesc, 0, testIndir, 16, descFIndirect, 0)
			d.offer(0)
		}},
		{name: "indirect table longer than the queue", build: func(d *driver) {
			for i := range uint16(testQSize + 1) {
				d.writeDesc(testIndir, i, bufBase, 8, descFNext, i+1)
			}
			d.writeDesc(testIndir, testQSize, bufBase, 8, 0, 0)
			d.writeDesc(testDesc, 0, testIndir, 16*(testQSize+1), descFIndirect, 0)
			d.offer(0)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mem := newTestMem(t)
			d := newDriver(t, mem)
			f := uint64(FeatureIndirectDesc)
			if tc.noIndir {
				f = 0
			}
			q := d.queue(f)
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
	q := d.queue(0)
	if need, _ := q.NeedsInterrupt(); !need {
		t.Error("no interrupt without NO_INTERRUPT")
	}
	d.put16(testAvail, availFNoInterrupt)
	if need, _ := q.NeedsInterrupt(); need {
		t.Error("interrupt despite NO_INTERRUPT")
	}

	// With EVENT_IDX: used_event (after the avail ring) decides.
	d.put16(testAvail, 0)
	q = d.queue(FeatureEventIdx)
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
	q := d.queue(0)
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

// newSparseMem returns size bytes of guest RAM at 0; the mapping is sparse,
// so only the pages a test writes cost host memory.
func newSparseMem(t testing.TB, size uint64) *guestmem.Memory {
	t.Helper()
	m, err := guestmem.New([]guestmem.RegionSpec{{GPA: 0, Size: size}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestQueueIndirectBounded offers chains through indirect tables of
// zero-length descriptors (which never reach the byte limit): a table of
// the queue's size is walked, a larger one is refused before its entries
// are, so a hostile table of a quarter million entries (its chain runs
// through the 65536 a next field can name, four times over) costs the
// host as little as a good one.
func TestQueueIndirectBounded(t *testing.T) {
	const hostile = 1 << 18 // a 4 MiB table
	mem := newSparseMem(t, 64<<20)
	d := newDriver(t, mem)
	for i := range 1 << 16 {
		d.writeDesc(testIndir, uint16(i), bufBase, 0, descFNext, uint16(i+1))
	}
	cases := []struct {
		name  string
		n     uint32 // table entries
		descs int    // descriptors in the popped chain; 0: refused
	}{
		{"queue size", testQSize, testQSize},
		{"one more than the queue size", testQSize + 1, 0},
		{"hostile", hostile, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.n <= 1<<16 {
				// The table's last entry ends the chain (until the
				// next case).
				last := uint16(tc.n - 1)
				d.writeDesc(testIndir, last, bufBase, 0, 0, 0)
				defer d.writeDesc(testIndir, last, bufBase, 0, descFNext, last+1)
			}
			d.writeDesc(testDesc, 0, testIndir, 16*tc.n, descFIndirect, 0)
			q := d.queue(FeatureIndirectDesc)
			c, err := q.walk(0)
			descs := 0
			if c != nil {
				descs = len(c.Descs)
			}
			if tc.descs == 0 && !errors.Is(err, ErrQueue) {
				t.Fatalf("walk of a %d-entry table: %d descriptors, %v; want ErrQueue", tc.n, descs, err)
			}
			if tc.descs != 0 && (err != nil || descs != tc.descs) {
				t.Fatalf("walk of a %d-entry table: %d descriptors, %v; want %d", tc.n, descs, err, tc.descs)
			}
			// A walk allocates the chain, its descriptor slice as it
			// grows and an error; growing it to a quarter million
			// entries takes dozens.
			if allocs := testing.AllocsPerRun(3, func() { q.walk(0) }); allocs > 16 {
				t.Errorf("walk of a %d-entry table: %v allocations", tc.n, allocs)
			}
		})
	}
}

// TestQueueChainBytes offers chains of writable descriptors that add up to
// just under and exactly 4 GiB: the used element's 32-bit length cannot
// say 4 GiB, so that chain is refused (virtio 1.2 §2.7.5.2).
func TestQueueChainBytes(t *testing.T) {
	const each = 256 << 20 // testQSize of them make 4 GiB
	mem := newSparseMem(t, bufBase+each)
	for _, tc := range []struct {
		name string
		last uint32 // length of the last descriptor
		ok   bool
	}{
		{"4 GiB less one byte", each - 1, true},
		{"4 GiB", each, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDriver(t, mem)
			for i := range uint16(testQSize - 1) {
				d.writeDesc(testDesc, i, bufBase, each, descFWrite|descFNext, i+1)
			}
			d.writeDesc(testDesc, testQSize-1, bufBase, tc.last, descFWrite, 0)
			d.offer(0)
			c, err := d.queue(0).Pop()
			switch {
			case tc.ok && (err != nil || c.WritableLen() != 1<<32-1):
				t.Errorf("Pop = %v; want a chain of 4 GiB - 1", err)
			case !tc.ok && !errors.Is(err, ErrQueue):
				t.Errorf("Pop of a 4 GiB chain = %v; want ErrQueue", err)
			}
		})
	}
}

// TestEventIdxWrap checks the EVENT_IDX arithmetic where the 16-bit
// indexes wrap (virtio 1.2 §2.7.7.2, §2.7.10; vring_need_event): an
// interrupt is due exactly when used_event lies among the entries used
// since the last check, a notification is asked for at the next entry
// the device will take, and chains are taken across 65535 -> 0.
func TestEventIdxWrap(t *testing.T) {
	usedEvent := uint64(testAvail + 4 + 2*testQSize)
	availEvent := uint64(testUsed + 4 + 8*testQSize)
	for _, tc := range []struct {
		name      string
		old, push uint16 // used index at the last check, entries used since
		usedEvent uint16
		want      bool
	}{
		{"event at the first new entry", 65534, 3, 65534, true},
		{"event at the last new entry, across the wrap", 65534, 3, 0, true},
		{"event one past the new entries", 65534, 3, 1, false},
		{"event before the old index", 65534, 3, 65533, false},
		{"event at 65535, used as the index wraps", 65535, 1, 65535, true},
		{"event 0 not yet reached", 65534, 1, 0, false},
		{"event 0 reached", 65535, 2, 0, true},
		{"all 65535 entries since the last check", 1, 65535, 65535, true},
		{"the new index is not among the used entries", 1, 65535, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := newTestMem(t)
			d := newDriver(t, mem)
			q := d.queue(FeatureEventIdx)
			q.nextUsed = tc.old
			q.signalledUsed, q.signalled = tc.old, true
			d.put16(usedEvent, tc.usedEvent)
			for i := uint16(0); i < tc.push; i++ {
				if err := q.Push(0, 0); err != nil {
					t.Fatal(err)
				}
			}
			if got, err := q.NeedsInterrupt(); err != nil || got != tc.want {
				t.Errorf("used %d..%d, used_event %d: interrupt %v (%v), want %v", tc.old, tc.old+tc.push, tc.usedEvent, got, err, tc.want)
			}
			if got := d.usedIdx(); got != tc.old+tc.push {
				t.Errorf("used idx %d, want %d", got, tc.old+tc.push)
			}
		})
	}

	// Taking chains across the wrap, and avail_event following.
	mem := newTestMem(t)
	d := newDriver(t, mem)
	q := d.queue(FeatureEventIdx)
	d.avail, q.nextAvail = 65534, 65534
	d.put16(testAvail+2, d.avail)
	var heads []uint16
	for i := 0; i < 4; i++ {
		h, _ := d.chain(seg{n: 8, write: true})
		d.offer(h)
		heads = append(heads, h)
	}
	for i, h := range heads {
		c, again, err := q.PopOrArm()
		if err != nil || c == nil || again || c.Head != h {
			t.Fatalf("pop %d at avail %d: %+v, again %v, %v; want head %d", i, uint16(65534+i), c, again, err, h)
		}
	}
	if c, again, err := q.PopOrArm(); c != nil || again || err != nil {
		t.Fatalf("an empty ring popped %+v, again %v, %v", c, again, err)
	}
	if v, _ := mem.Uint16(availEvent); v != 2 {
		t.Errorf("avail_event %d after taking entries up to 1, want 2", v)
	}
	// A chain offered after avail_event was written is seen by the
	// re-check.
	h, _ := d.chain(seg{n: 8, write: true})
	d.offer(h)
	if more, err := q.Pending(); !more || err != nil {
		t.Errorf("Pending after an offer across the wrap: %v, %v", more, err)
	}
}
