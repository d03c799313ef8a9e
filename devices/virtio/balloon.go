package virtio

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"
)

// Feature bits of virtio-balloon (virtio 1.2 §5.5.3).
const (
	// BalloonFStatsVQ: the statsq exists and carries the guest's
	// memory statistics.
	BalloonFStatsVQ = 1 << 1
	// BalloonFDeflateOnOOM: the guest deflates the balloon when it
	// runs out of memory, before it would kill a process.
	BalloonFDeflateOnOOM = 1 << 2
	// BalloonFReporting: the reporting_vq exists and the guest reports
	// free pages on it, which the device discards.
	BalloonFReporting = 1 << 5
)

// Balloon statistics tags (virtio 1.2 §5.5.6.3).
const (
	BalloonStatSwapIn = iota
	BalloonStatSwapOut
	BalloonStatMajorFaults
	BalloonStatMinorFaults
	BalloonStatFreeMemory
	BalloonStatTotalMemory
	BalloonStatAvailableMemory
	BalloonStatDiskCaches
	BalloonStatHugetlbAllocations
	BalloonStatHugetlbFailures
	balloonStatTags
)

const (
	// balloonPageShift is the size of the pages the inflate and
	// deflate queues name by frame number: 4 KiB whatever the guest's
	// page size (virtio 1.2 §5.5.6, VIRTIO_BALLOON_PFN_SHIFT).
	balloonPageShift = 12
	// balloonConfigSize is struct virtio_balloon_config: num_pages,
	// actual, free_page_hint_cmd_id, poison_val (le32 each).
	balloonConfigSize = 16
	// balloonMaxRequest bounds the bytes of one inflate, deflate or
	// statistics buffer the device reads (Linux sends 256 frame
	// numbers, 1 KiB, at most).
	balloonMaxRequest = 64 << 10
	// balloonStatSize is one struct virtio_balloon_stat: le16 tag,
	// le64 value, packed.
	balloonStatSize = 10
)

// BalloonConfig says what a balloon offers.
type BalloonConfig struct {
	// DeflateOnOOM lets the guest take pages back from the balloon
	// when it runs out of memory.
	DeflateOnOOM bool
	// Reporting asks the guest to report the pages it frees, which the
	// device then returns to the host.
	Reporting bool
	// StatsInterval is how often the device asks the guest for fresh
	// statistics; 0 asks once, when the driver starts.
	StatsInterval time.Duration
}

// BalloonStats are the guest's memory statistics, as last reported, in
// bytes (counts for the faults and hugetlb tags). Unreported tags are
// absent.
type BalloonStats struct {
	Values  map[int]uint64
	Updated time.Time
}

// Balloon is virtio-balloon (virtio 1.2 §5.5): the host sets a target of
// pages the guest should give up (inflate); the device returns the pages
// the guest gives, and, with free page reporting, the pages the guest
// reports free, to the host by discarding them from guest RAM
// (guestmem.Memory.Discard). Deflated pages need nothing: the guest's
// next touch faults them in again.
type Balloon struct {
	cfg BalloonConfig

	mu     sync.Mutex
	target uint32 // num_pages
	actual uint32 // what the driver wrote
	q      *Queues
	w      *workers
	stop   chan struct{} // closed by Reset: ends the statistics loop
	stats  BalloonStats

	// discarded counts the bytes given back to the host: by inflation
	// and by free page reporting.
	inflated, reported atomic.Uint64
}

// NewBalloon returns a balloon device with a target of 0 pages.
func NewBalloon(cfg BalloonConfig) *Balloon { return &Balloon{cfg: cfg} }

// Type implements Device.
func (b *Balloon) Type() uint32 { return TypeBalloon }

// Features implements Device.
func (b *Balloon) Features() uint64 {
	f := uint64(BalloonFStatsVQ)
	if b.cfg.DeflateOnOOM {
		f |= BalloonFDeflateOnOOM
	}
	if b.cfg.Reporting {
		f |= BalloonFReporting
	}
	return f
}

// QueueMaxSizes implements Device: inflateq, deflateq, statsq and, when
// offered, reporting_vq. They are all of one size: which queue index is
// which depends on the features the driver accepts (see NumQueues).
func (b *Balloon) QueueMaxSizes() []uint16 {
	q := []uint16{128, 128, 128}
	if b.cfg.Reporting {
		q = append(q, 128)
	}
	return q
}

// NumQueues implements FeatureQueues: the driver numbers the queues it
// uses one after the other (Linux's virtballoon init_vqs and
// vm_find_vqs skip the absent ones), so statsq and reporting_vq are
// there only with their features, and reporting_vq is queue 2 without
// statsq.
func (b *Balloon) NumQueues(features uint64) int {
	n := 2
	if features&BalloonFStatsVQ != 0 {
		n++
	}
	if features&BalloonFReporting != 0 {
		n++
	}
	return n
}

// ReadConfig implements Device.
func (b *Balloon) ReadConfig(offset uint64, data []byte) {
	var c [balloonConfigSize]byte
	b.mu.Lock()
	binary.LittleEndian.PutUint32(c[0:], b.target)
	binary.LittleEndian.PutUint32(c[4:], b.actual)
	b.mu.Unlock()
	if offset < uint64(len(c)) {
		copy(data, c[offset:])
	}
}

// WriteConfig implements Device: the driver writes only actual.
func (b *Balloon) WriteConfig(offset uint64, data []byte) {
	if offset != 4 || len(data) != 4 {
		return
	}
	b.mu.Lock()
	b.actual = binary.LittleEndian.Uint32(data)
	b.mu.Unlock()
}

// SetTarget sets the pages (4 KiB) the guest should give up, and tells
// a running driver.
func (b *Balloon) SetTarget(pages uint32) {
	b.mu.Lock()
	b.target = pages
	q := b.q
	b.mu.Unlock()
	if q != nil {
		q.ConfigChanged()
	}
}

// SetActual sets the pages the driver said it holds: a restored VM's
// driver holds what it held when the snapshot was taken.
func (b *Balloon) SetActual(pages uint32) {
	b.mu.Lock()
	b.actual = pages
	b.mu.Unlock()
}

// BalloonState is what Balloon.State reports.
type BalloonState struct {
	TargetPages, ActualPages uint32
	// Inflated and Reported are the bytes returned to the host since
	// the device was made: from inflation and from free page reports.
	Inflated, Reported uint64
	Stats              BalloonStats
}

// State returns the balloon's target, the guest's answer, what was
// returned to the host and the last statistics.
func (b *Balloon) State() BalloonState {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := BalloonState{TargetPages: b.target, ActualPages: b.actual, Inflated: b.inflated.Load(), Reported: b.reported.Load()}
	st.Stats.Updated = b.stats.Updated
	if b.stats.Values != nil {
		st.Stats.Values = make(map[int]uint64, len(b.stats.Values))
		for k, v := range b.stats.Values {
			st.Stats.Values[k] = v
		}
	}
	return st
}

// Activate implements Device.
func (b *Balloon) Activate(q *Queues) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.q = q
	b.w = &workers{q: q}
	b.stop = make(chan struct{})
	b.w.serve(0, b.handleInflate)
	b.w.serve(1, handleDeflate)
	next := 2
	if q.Features&BalloonFStatsVQ != 0 {
		b.w.wg.Add(1)
		go b.statsLoop(b.w, b.stop, next)
		next++
	}
	if q.Features&BalloonFReporting != 0 {
		b.w.serve(next, b.handleReport)
	}
	return nil
}

// Reset implements Device.
func (b *Balloon) Reset() {
	b.mu.Lock()
	w, stop := b.w, b.stop
	// actual stays: after a real reset the driver has deflated and
	// said so, and across a snapshot's quiesce the guest still holds
	// what it gave.
	b.w, b.q, b.stop = nil, nil, nil
	b.mu.Unlock()
	if w != nil {
		close(stop)
		w.shutdown()
	}
}

// Restored implements Restorer: Quiesce handed the statistics buffer
// back to the driver, which hears of it now and sends fresh statistics.
func (b *Balloon) Restored(q *Queues) {
	if q.Features&BalloonFStatsVQ != 0 {
		q.UsedBuffers(2)
	}
}

// handleInflate discards the pages the driver put in the balloon: a
// buffer of le32 page frame numbers. A frame outside guest RAM is
// ignored (as QEMU does); runs of consecutive frames are discarded at
// once.
func (b *Balloon) handleInflate(c *Chain) (uint32, error) {
	bufs, err := c.Reader().Buffers(balloonMaxRequest)
	if err != nil {
		return 0, err
	}
	var raw []byte
	for _, s := range bufs {
		raw = append(raw, s...) // a copy: the guest may change its buffer
	}
	var start, n uint64 // the run of frames being gathered
	flush := func() {
		if n > 0 {
			d, _ := c.mem.Discard(start<<balloonPageShift, n<<balloonPageShift)
			b.inflated.Add(d)
		}
	}
	for i := 0; i+4 <= len(raw); i += 4 {
		pfn := uint64(binary.LittleEndian.Uint32(raw[i:]))
		if n > 0 && pfn == start+n {
			n++
			continue
		}
		flush()
		start, n = pfn, 1
	}
	flush()
	return 0, nil
}

// handleDeflate has nothing to do: without VIRTIO_BALLOON_F_MUST_TELL_HOST
// the guest may use deflated pages at once, and they fault back in.
func handleDeflate(*Chain) (uint32, error) { return 0, nil }

// handleReport discards each free page range the driver reports: the
// chain's buffers (device-writable in Linux's page_reporting, virtio 1.2
// §5.5.6.7), each already checked to lie in guest RAM.
func (b *Balloon) handleReport(c *Chain) (uint32, error) {
	for _, d := range c.Descs {
		n, _ := c.mem.Discard(d.Addr, uint64(d.Len))
		b.reported.Add(n)
	}
	return 0, nil
}

// statsLoop serves statsq (virtio 1.2 §5.5.6.3): the driver makes one
// buffer of statistics available; the device reads it and keeps it
// until it wants fresh ones, then gives it back used, and the driver
// fills and makes it available again.
func (b *Balloon) statsLoop(w *workers, stop <-chan struct{}, i int) {
	defer w.wg.Done()
	q, ev := w.q.Queues[i], w.q.Notify[i]
	for {
		c, err := waitChain(w, q, ev)
		if err != nil {
			w.q.Fail(err)
			return
		}
		if c == nil {
			return // reset
		}
		if err := b.readStats(c); err != nil {
			w.q.Fail(err)
			return
		}
		held := c.Head
		if b.cfg.StatsInterval <= 0 {
			// Asked once: keep the buffer until the device stops,
			// then hand it back so that a restored driver is not left
			// waiting for it.
			<-stop
			_ = q.Push(held, 0)
			return
		}
		select {
		case <-time.After(b.cfg.StatsInterval):
		case <-stop:
			_ = q.Push(held, 0)
			return
		}
		if err := q.Push(held, 0); err != nil {
			w.q.Fail(err)
			return
		}
		w.q.UsedBuffers(i)
	}
}

// waitChain returns the next chain of q, waiting for the driver's
// notification, or nil once the device is reset.
func waitChain(w *workers, q *Queue, ev *Event) (*Chain, error) {
	for {
		if w.stop.Load() {
			return nil, nil
		}
		c, again, err := q.PopOrArm()
		if err != nil || c != nil {
			return c, err
		}
		if again {
			continue
		}
		if _, err := ev.Wait(); err != nil {
			return nil, nil
		}
	}
}

// readStats records the statistics in the chain's readable buffers;
// unknown tags are skipped (virtio 1.2 §5.5.6.3.1: the device MUST
// ignore them).
func (b *Balloon) readStats(c *Chain) error {
	bufs, err := c.Reader().Buffers(balloonMaxRequest)
	if err != nil {
		return err
	}
	var raw []byte
	for _, s := range bufs {
		raw = append(raw, s...)
	}
	vals := make(map[int]uint64)
	for i := 0; i+balloonStatSize <= len(raw); i += balloonStatSize {
		tag := int(binary.LittleEndian.Uint16(raw[i:]))
		if tag < balloonStatTags {
			vals[tag] = binary.LittleEndian.Uint64(raw[i+2:])
		}
	}
	b.mu.Lock()
	b.stats = BalloonStats{Values: vals, Updated: time.Now()}
	b.mu.Unlock()
	return nil
}
