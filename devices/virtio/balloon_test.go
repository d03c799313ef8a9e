package virtio

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/vesselvm/vessel/devices"
)

// balloonDrivers returns n drivers whose rings and buffers do not overlap.
func balloonDrivers(t *testing.T, m *MMIO, n int) []*driver {
	var ds []*driver
	for i := 0; i < n; i++ {
		d := newDriver(t, m.mem)
		base := uint64(0x20000 + i*0x10000)
		d.cfg = QueueConfig{Size: 1, Desc: base, Driver: base + 0x1000, Device: base + 0x2000}
		if i != 2 { // statsq is queue 2 only with its feature; size 1 fits all
			d.cfg.Size = testQSize
		}
		d.buf = base + 0x4000
		ds = append(ds, d)
	}
	return ds
}

// waitUsed waits until the driver's used index reaches want.
func waitUsed(t *testing.T, d *driver, want uint16) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for d.usedIdx() != want {
		if time.Now().After(deadline) {
			t.Fatalf("used index %d, want %d", d.usedIdx(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

func fillRAM(t *testing.T, m *MMIO, from, to uint64) {
	b, err := m.mem.Slice(from, to-from)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0xAA
	}
}

func byteAt(t *testing.T, m *MMIO, gpa uint64) byte {
	var b [1]byte
	if _, err := m.mem.ReadAt(b[:], gpa); err != nil {
		t.Fatal(err)
	}
	return b[0]
}

func pfns(v ...uint32) []byte {
	var b []byte
	for _, p := range v {
		b = binary.LittleEndian.AppendUint32(b, p)
	}
	return b
}

func stat(tag uint16, v uint64) []byte {
	b := binary.LittleEndian.AppendUint16(nil, tag)
	return binary.LittleEndian.AppendUint64(b, v)
}

func newBalloon(t *testing.T, cfg BalloonConfig) (*Balloon, *MMIO, *devices.CountingInterrupt) {
	b := NewBalloon(cfg)
	irq := &devices.CountingInterrupt{}
	m, err := NewMMIO(b, newTestMem(t), irq, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return b, m, irq
}

// TestBalloonQueues inflates, reports free pages and reads statistics
// over the transport as Linux's driver does: inflated frames and
// reported ranges are discarded (read back as zeros), frames outside RAM
// and partial pages are left alone, statistics are read and their
// buffer handed back at the interval.
func TestBalloonQueues(t *testing.T) {
	b, m, _ := newBalloon(t, BalloonConfig{Reporting: true, DeflateOnOOM: true, StatsInterval: 10 * time.Millisecond})
	ds := balloonDrivers(t, m, 4)
	fillRAM(t, m, 0x80000, 0x100000)
	startDriver(t, m, BalloonFStatsVQ|BalloonFReporting|BalloonFDeflateOnOOM, ds...)

	// Statistics: free memory and an unknown tag, which is skipped.
	stats := append(stat(BalloonStatFreeMemory, 123<<20), stat(99, 7)...)
	h, _ := ds[2].chain(seg{data: stats})
	ds[2].offer(h)
	wr(m, RegQueueNotify, 2)
	waitUsed(t, ds[2], 1) // handed back after the interval
	st := b.State()
	if st.Stats.Values[BalloonStatFreeMemory] != 123<<20 || len(st.Stats.Values) != 1 {
		t.Errorf("stats %v, want free memory 123 MiB only", st.Stats.Values)
	}

	// Inflate: a run of three frames, one alone, one outside RAM.
	h, _ = ds[0].chain(seg{data: pfns(0x80, 0x81, 0x82, 0x90, 0xFFFFFFFF)})
	ds[0].offer(h)
	wr(m, RegQueueNotify, 0)
	waitUsed(t, ds[0], 1)
	for _, a := range []uint64{0x80000, 0x82fff, 0x90000, 0x90fff} {
		if v := byteAt(t, m, a); v != 0 {
			t.Errorf("inflated byte %#x is %#x, want 0", a, v)
		}
	}
	for _, a := range []uint64{0x83000, 0x8ffff, 0x91000} {
		if v := byteAt(t, m, a); v != 0xAA {
			t.Errorf("byte %#x is %#x, want it kept", a, v)
		}
	}

	// Deflate changes nothing.
	h, _ = ds[1].chain(seg{data: pfns(0x80)})
	ds[1].offer(h)
	wr(m, RegQueueNotify, 1)
	waitUsed(t, ds[1], 1)

	// Free page reporting: device-writable ranges, one not page aligned.
	d := ds[3]
	head := d.next
	d.writeDesc(d.cfg.Desc, d.next, 0xA0000, 0x2000, descFWrite|descFNext, d.next+1)
	d.next++
	d.writeDesc(d.cfg.Desc, d.next, 0xB0800, 0x1000, descFWrite, 0)
	d.next++
	d.offer(head)
	wr(m, RegQueueNotify, 3)
	waitUsed(t, d, 1)
	if v := byteAt(t, m, 0xA1fff); v != 0 {
		t.Errorf("reported byte is %#x, want 0", v)
	}
	if v := byteAt(t, m, 0xB0800); v != 0xAA {
		t.Errorf("byte of a partly reported page is %#x, want it kept", v)
	}
	st = b.State()
	if st.Inflated != 4<<12 || st.Reported != 0x2000 {
		t.Errorf("inflated %#x, reported %#x; want %#x, %#x", st.Inflated, st.Reported, 4<<12, 0x2000)
	}
	wr(m, regStatus, 0) // reset: the statistics loop stops
}

// TestBalloonReportingWithoutStats negotiates free page reporting but no
// statsq: the driver's third queue is then reporting_vq.
func TestBalloonReportingWithoutStats(t *testing.T) {
	b, m, _ := newBalloon(t, BalloonConfig{Reporting: true})
	ds := balloonDrivers(t, m, 3)
	ds[2].cfg.Size = testQSize
	fillRAM(t, m, 0x80000, 0x100000)
	startDriver(t, m, BalloonFReporting, ds...)
	h, _ := ds[2].chain(seg{n: 0x1000, write: true})
	ds[2].offer(h)
	wr(m, RegQueueNotify, 2)
	waitUsed(t, ds[2], 1)
	if st := b.State(); st.Reported != 0x1000 {
		t.Errorf("reported %#x, want 0x1000", st.Reported)
	}
}

// TestBalloonConfig checks the configuration space: the target the host
// sets (with a configuration change interrupt once the driver runs), the
// actual count the driver writes, nothing else writable.
func TestBalloonConfig(t *testing.T) {
	b, m, irq := newBalloon(t, BalloonConfig{})
	read := func(off uint64) uint32 {
		var v [4]byte
		m.Read(regConfig+off, v[:])
		return binary.LittleEndian.Uint32(v[:])
	}
	b.SetTarget(100) // before the driver: no interrupt
	if read(0) != 100 || irq.Count() != 0 {
		t.Fatalf("num_pages %d, %d interrupts; want 100, 0", read(0), irq.Count())
	}
	ds := balloonDrivers(t, m, 3)
	startDriver(t, m, BalloonFStatsVQ, ds...)
	gen := rd(m, regConfigGen)
	b.SetTarget(256)
	if read(0) != 256 || irq.Count() != 1 || rd(m, regConfigGen) == gen || rd(m, regInterruptStat)&interruptConfig == 0 {
		t.Errorf("after SetTarget: num_pages %d, %d interrupts, generation %d (was %d), interrupt status %#x",
			read(0), irq.Count(), rd(m, regConfigGen), gen, rd(m, regInterruptStat))
	}
	var v [4]byte
	binary.LittleEndian.PutUint32(v[:], 200)
	m.Write(regConfig+4, v[:])
	m.Write(regConfig+0, v[:]) // num_pages is the device's
	if st := b.State(); st.ActualPages != 200 || st.TargetPages != 256 {
		t.Errorf("actual %d, target %d; want 200, 256", st.ActualPages, st.TargetPages)
	}
	if b.NumQueues(0) != 2 || b.NumQueues(BalloonFStatsVQ|BalloonFReporting) != 4 {
		t.Error("NumQueues")
	}
}

// A balloon whose driver left statsq out (three of four queues) is
// quiesced and restored on a new transport; reporting goes on there, and
// the statistics buffer a stats-enabled driver gave is handed back on
// quiesce rather than lost.
func TestBalloonQuiesceRestore(t *testing.T) {
	mem := newTestMem(t)
	cfg := BalloonConfig{Reporting: true}
	a, err := NewMMIO(NewBalloon(cfg), mem, &devices.CountingInterrupt{}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ds := balloonDrivers(t, a, 3)
	ds[2].cfg.Size = testQSize
	startDriver(t, a, BalloonFReporting, ds...)
	st := a.Quiesce() // must not look for a fourth active queue
	if len(st.Queues) != 4 || st.Queues[3].Ready {
		t.Fatalf("quiesced queues %+v", st.Queues)
	}
	nb := NewBalloon(cfg)
	b, err := NewMMIO(nb, mem, &devices.CountingInterrupt{}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Restore(st); err != nil {
		t.Fatal(err)
	}
	h, _ := ds[2].chain(seg{n: 0x1000, write: true})
	ds[2].offer(h)
	wr(b, RegQueueNotify, 2)
	waitUsed(t, ds[2], 1)
	if got := nb.State().Reported; got != 0x1000 {
		t.Errorf("restored balloon reported %#x, want 0x1000", got)
	}

	// With statsq: the held buffer comes back used at quiesce.
	mem2 := newTestMem(t)
	c, err := NewMMIO(NewBalloon(BalloonConfig{}), mem2, &devices.CountingInterrupt{}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ds = balloonDrivers(t, c, 3)
	startDriver(t, c, BalloonFStatsVQ, ds...)
	h, _ = ds[2].chain(seg{data: stat(BalloonStatFreeMemory, 1)})
	ds[2].offer(h)
	wr(c, RegQueueNotify, 2)
	waitFor(t, "statistics read", func() bool { return c.dev.(*Balloon).State().Stats.Values != nil })
	var actual [4]byte
	binary.LittleEndian.PutUint32(actual[:], 200)
	c.Write(regConfig+4, actual[:])
	if st := c.Quiesce(); st.Queues[2].NextUsed != 1 || ds[2].usedIdx() != 1 {
		t.Errorf("statistics buffer not handed back at quiesce: next used %d, used index %d", st.Queues[2].NextUsed, ds[2].usedIdx())
	}
	if got := c.dev.(*Balloon).State().ActualPages; got != 200 {
		t.Errorf("after quiesce the balloon says the guest holds %d pages, want the 200 it does", got)
	}
}
