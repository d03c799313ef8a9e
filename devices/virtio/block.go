package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Block feature bits (virtio 1.2 §5.2.3).
const (
	blkFSegMax  = 1 << 2
	blkFRO      = 1 << 5
	blkFBlkSize = 1 << 6
	blkFFlush   = 1 << 9
	blkFDiscard = 1 << 13
)

// Block request types and status values (virtio 1.2 §5.2.6).
const (
	blkTIn      = 0
	blkTOut     = 1
	blkTFlush   = 4
	blkTGetID   = 8
	blkTDiscard = 11

	blkSOK     = 0
	blkSIOErr  = 1
	blkSUnsupp = 2

	sectorSize     = 512
	blkIDBytes     = 20 // VIRTIO_BLK_ID_BYTES
	blkQueueSize   = 256
	blkSegMax      = blkQueueSize - 2 // data descriptors besides header and status
	blkMaxDiscard  = 1 << 22          // sectors per discard segment (2 GiB)
	blkDiscardSegs = 1
	blkHeaderSize  = 16

	// iovMax is Linux's IOV_MAX (UIO_MAXIOV): preadv and pwritev take
	// at most this many buffers per call.
	iovMax = 1024
)

// Block is virtio-blk (virtio 1.2 §5.2) over a raw image file.
type Block struct {
	f        *os.File
	fd       int
	readOnly bool
	discard  bool // the file system can punch holes
	sectors  uint64
	id       [blkIDBytes]byte
	config   []byte

	// readv and writev are unix.Preadv and unix.Pwritev; tests put in
	// ones that block, as a stalled host file system does.
	readv, writev func(int, [][]byte, int64) (int, error)
	resetWait     time.Duration // blkResetWait

	serial   string
	logf     func(string, ...any)
	reported atomic.Bool // a host I/O error was reported

	mu   sync.Mutex
	run  *blkRun
	busy sync.WaitGroup // the loops of every activation, abandoned ones included
}

// blkResetWait bounds how long a reset (a vCPU writing the status
// register) waits for a request in host I/O: then the request is
// abandoned; it finishes on its own and its result is thrown away.
const blkResetWait = 2 * time.Second

// blkRun is one activation of the block device.
type blkRun struct {
	q *Queues
	// mu makes "not stopped, then push the result" one step, so that
	// nothing touches the queue once Reset has set stopped.
	mu      sync.Mutex
	stopped bool
	done    chan struct{} // closed when the loop returns
}

func (r *blkRun) isStopped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopped
}

// ErrDiskSize is returned for an image whose size is not a whole number of
// 512-byte sectors.
var ErrDiskSize = errors.New("virtio: disk image size is not a multiple of 512 bytes")

// NewBlock returns a block device over f (opened read-write unless
// readOnly). serial is the ID the guest reads (at most 20 bytes are used).
// The device does not close f.
func NewBlock(f *os.File, readOnly bool, serial string) (*Block, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("virtio block: %w", err)
	}
	size := st.Size()
	if st.Mode()&os.ModeDevice != 0 {
		if size, err = f.Seek(0, 2); err != nil {
			return nil, fmt.Errorf("virtio block: size of %s: %w", f.Name(), err)
		}
	}
	if size%sectorSize != 0 {
		return nil, fmt.Errorf("%w: %s has %d bytes", ErrDiskSize, f.Name(), size)
	}
	b := &Block{f: f, fd: int(f.Fd()), readOnly: readOnly, sectors: uint64(size) / sectorSize,
		readv: unix.Preadv, writev: unix.Pwritev, resetWait: blkResetWait}
	copy(b.id[:], serial)
	b.serial = serial
	if !readOnly {
		// Punching a hole past the end changes nothing but tells whether
		// the file system supports it.
		err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, size, sectorSize)
		b.discard = err == nil
	}
	b.config = b.makeConfig()
	return b, nil
}

// makeConfig lays out struct virtio_blk_config (virtio 1.2 §5.2.4).
func (b *Block) makeConfig() []byte {
	c := make([]byte, 60)
	binary.LittleEndian.PutUint64(c[0:], b.sectors)        // capacity
	binary.LittleEndian.PutUint32(c[12:], blkSegMax)       // seg_max
	binary.LittleEndian.PutUint32(c[20:], sectorSize)      // blk_size
	binary.LittleEndian.PutUint16(c[34:], 1)               // num_queues
	binary.LittleEndian.PutUint32(c[36:], blkMaxDiscard)   // max_discard_sectors
	binary.LittleEndian.PutUint32(c[40:], blkDiscardSegs)  // max_discard_seg
	binary.LittleEndian.PutUint32(c[44:], 4096/sectorSize) // discard_sector_alignment
	return c
}

// Type implements Device.
func (b *Block) Type() uint32 { return TypeBlock }

// Features implements Device.
func (b *Block) Features() uint64 {
	f := uint64(blkFSegMax | blkFBlkSize | blkFFlush)
	if b.readOnly {
		f |= blkFRO
	}
	if b.discard {
		f |= blkFDiscard
	}
	return f
}

// QueueMaxSizes implements Device: one request queue.
func (b *Block) QueueMaxSizes() []uint16 { return []uint16{blkQueueSize} }

// ReadConfig implements Device.
func (b *Block) ReadConfig(off uint64, data []byte) {
	if off < uint64(len(b.config)) {
		copy(data, b.config[off:])
	}
}

// WriteConfig implements Device: the configuration is read-only (the
// writeback field needs VIRTIO_BLK_F_CONFIG_WCE, not offered).
func (b *Block) WriteConfig(uint64, []byte) {}

// Restored implements Restorer: a restored VM's disk may be another
// image than the snapshot's (a template's image slot), so the driver is
// told to read the capacity again (virtio 1.2 §5.2.6.2: a configuration
// change; Linux's virtblk_config_changed updates the disk's size).
func (b *Block) Restored(q *Queues) { q.ConfigChanged() }

// Activate implements Device.
func (b *Block) Activate(q *Queues) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.run != nil {
		return errors.New("virtio block: activated twice without a reset")
	}
	r := &blkRun{q: q, done: make(chan struct{})}
	b.run = r
	b.busy.Add(1)
	go b.loop(r)
	return nil
}

// Reset implements Device. It waits for a request in flight at most
// resetWait: a request blocked in host I/O (a stalled file system) must
// not hold the vCPU that resets the device. An abandoned request
// finishes on its own, without touching the queue again; Close waits for
// it.
func (b *Block) Reset() {
	b.mu.Lock()
	r := b.run
	b.run = nil
	b.mu.Unlock()
	if r == nil {
		return
	}
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	_ = r.q.Notify[0].Signal()
	t := time.NewTimer(b.resetWait)
	defer t.Stop()
	select {
	case <-r.done:
	case <-t.C:
	}
}

// Close waits until no request of any activation, an abandoned one
// included, is left; call it after the transport's Close and before
// closing the image file, whose descriptor they use. It returns nil.
func (b *Block) Close() error {
	b.Reset()
	b.busy.Wait()
	return nil
}

// loop serves the request queue of one activation until Reset.
func (b *Block) loop(r *blkRun) {
	defer b.busy.Done()
	defer close(r.done)
	for !r.isStopped() {
		if err := b.drain(r); err != nil {
			if !r.isStopped() {
				r.q.Fail(err)
			}
			return
		}
		if _, err := r.q.Notify[0].Wait(); err != nil {
			return
		}
	}
}

// drain serves requests until the driver has no more available, with
// notifications suppressed meanwhile (virtio 1.2 §2.7.10).
func (b *Block) drain(r *blkRun) error {
	q := r.q.Queues[0]
	for !r.isStopped() {
		if err := q.DisableNotify(); err != nil {
			return err
		}
		pushed := false
		for {
			if r.isStopped() {
				return nil
			}
			c, err := q.Pop()
			if err != nil {
				return err
			}
			if c == nil {
				break
			}
			n, err := b.handle(c)
			if err != nil {
				return err
			}
			r.mu.Lock()
			if r.stopped {
				r.mu.Unlock()
				return nil // reset meanwhile: the queue is no longer ours
			}
			err = q.Push(c.Head, n)
			r.mu.Unlock()
			if err != nil {
				return err
			}
			pushed = true
		}
		if pushed {
			r.mu.Lock()
			if !r.stopped {
				r.q.UsedBuffers(0)
			}
			r.mu.Unlock()
		}
		if err := q.EnableNotify(); err != nil {
			return err
		}
		// A request made available before the driver saw
		// EnableNotify sent no notification: look again.
		if more, err := q.Pending(); err != nil || !more {
			return err
		}
	}
	return nil
}

// handle serves one request: a 16-byte header, data, and a status byte the
// device writes last (virtio 1.2 §5.2.6).
func (b *Block) handle(c *Chain) (uint32, error) {
	r, w := c.Reader(), c.Writer()
	var hdr [blkHeaderSize]byte
	if err := r.ReadFull(hdr[:]); err != nil || w.Remaining() < 1 {
		return 0, fmt.Errorf("%w: block request %d without header or status byte", ErrQueue, c.Head)
	}
	typ := binary.LittleEndian.Uint32(hdr[0:])
	sector := binary.LittleEndian.Uint64(hdr[8:])
	dataIn := w.Remaining() - 1 // room for data before the status byte

	status := byte(blkSOK)
	switch typ {
	case blkTIn:
		status = b.read(w, sector, dataIn)
	case blkTOut:
		status = b.write(r, sector)
	case blkTFlush:
		if err := unix.Fdatasync(b.fd); err != nil {
			status = blkSIOErr
		}
	case blkTGetID:
		if dataIn < blkIDBytes {
			status = blkSIOErr
		} else if _, err := w.Write(b.id[:]); err != nil {
			return 0, err
		}
	case blkTDiscard:
		status = b.discardRanges(r)
	default:
		status = blkSUnsupp
	}
	// The status byte is the last writable byte, whatever was written
	// before it.
	w.seekEnd(1)
	if _, err := w.Write([]byte{status}); err != nil {
		return 0, err
	}
	return w.Written(), nil
}

// span checks that n bytes at sector lie on the disk and returns the byte
// offset.
func (b *Block) span(sector, n uint64) (int64, bool) {
	if n%sectorSize != 0 || sector > b.sectors || n/sectorSize > b.sectors-sector {
		return 0, false
	}
	return int64(sector * sectorSize), true
}

func (b *Block) read(w *Writer, sector, n uint64) byte {
	off, ok := b.span(sector, n)
	if !ok {
		return blkSIOErr
	}
	bufs, err := w.Buffers(n)
	if err != nil || len(bufs) > blkSegMax {
		return blkSIOErr // more segments than seg_max allows
	}
	return b.hostIO("read", b.readv, bufs, off)
}

func (b *Block) write(r *Reader, sector uint64) byte {
	n := r.Remaining()
	if b.readOnly {
		return blkSIOErr
	}
	off, ok := b.span(sector, n)
	if !ok {
		return blkSIOErr
	}
	bufs, err := r.Buffers(n)
	if err != nil || len(bufs) > blkSegMax {
		return blkSIOErr // more segments than seg_max allows
	}
	return b.hostIO("write", b.writev, bufs, off)
}

// SetLog makes the first failure of the host file (a full file system,
// a failing disk: errors the guest cannot cause and only sees as
// VIRTIO_BLK_S_IOERR) a line to logf, naming the disk and the error.
// Call it before the device is activated.
func (b *Block) SetLog(logf func(string, ...any)) { b.logf = logf }

// hostIO transfers bufs at off with op and returns the request status,
// reporting the first host error.
func (b *Block) hostIO(what string, op func(int, [][]byte, int64) (int, error), bufs [][]byte, off int64) byte {
	status, err := vectored(op, b.fd, bufs, off)
	if err != nil && b.logf != nil && !b.reported.Swap(true) {
		b.logf("virtio block %q: %s at byte %d of the host file: %v: the guest gets I/O errors (further errors not reported)", b.serial, what, off, err)
	}
	return status
}

// vectored runs preadv or pwritev, at most iovMax buffers per call, until
// all of bufs is transferred and returns the request status: a short
// transfer (past the end of the file) or an error is VIRTIO_BLK_S_IOERR.
// The error is the host's (nil for a short transfer).
func vectored(op func(int, [][]byte, int64) (int, error), fd int, bufs [][]byte, off int64) (byte, error) {
	for len(bufs) > 0 {
		k, err := op(fd, bufs[:min(len(bufs), iovMax)], off)
		if err == unix.EINTR {
			continue
		}
		if err != nil || k == 0 {
			return blkSIOErr, err
		}
		off += int64(k)
		bufs = advance(bufs, k)
	}
	return blkSOK, nil
}

// discardRanges punches holes for struct virtio_blk_discard_write_zeroes
// segments (16 bytes each).
func (b *Block) discardRanges(r *Reader) byte {
	if b.readOnly {
		return blkSIOErr
	}
	if !b.discard {
		return blkSUnsupp
	}
	segs := r.Remaining() / 16
	if segs == 0 || segs > blkDiscardSegs || r.Remaining()%16 != 0 {
		return blkSUnsupp
	}
	for i := uint64(0); i < segs; i++ {
		var s [16]byte
		if r.ReadFull(s[:]) != nil {
			return blkSIOErr
		}
		sector := binary.LittleEndian.Uint64(s[0:])
		count := uint64(binary.LittleEndian.Uint32(s[8:]))
		flags := binary.LittleEndian.Uint32(s[12:])
		if flags != 0 || count > blkMaxDiscard {
			return blkSUnsupp
		}
		off, ok := b.span(sector, count*sectorSize)
		if !ok {
			return blkSIOErr
		}
		if err := unix.Fallocate(b.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, int64(count*sectorSize)); err != nil {
			return blkSIOErr
		}
	}
	return blkSOK
}

// advance drops the first n bytes of bufs.
func advance(bufs [][]byte, n int) [][]byte {
	for n > 0 && len(bufs) > 0 {
		if n < len(bufs[0]) {
			bufs[0] = bufs[0][n:]
			return bufs
		}
		n -= len(bufs[0])
		bufs = bufs[1:]
	}
	return bufs
}
