package virtio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/devices"
)

func blkHeader(typ uint32, sector uint64) []byte {
	h := make([]byte, 16)
	binary.LittleEndian.PutUint32(h, typ)
	binary.LittleEndian.PutUint64(h[8:], sector)
	return h
}

// blockRig is a block device on an MMIO transport with a driver.
type blockRig struct {
	t   *testing.T
	m   *MMIO
	d   *driver
	mem interface {
		ReadAt([]byte, uint64) (int, error)
	}
	path string
	n    uint16
	blk  *Block
}

func newBlockRig(t *testing.T, size int64, readOnly bool) *blockRig {
	t.Helper()
	return newBlockRigQ(t, size, readOnly, testQSize)
}

// newBlockRigQ is newBlockRig with a queue of qsize descriptors; setup
// functions adjust the device before the driver starts it.
func newBlockRigQ(t *testing.T, size int64, readOnly bool, qsize uint16, setup ...func(*Block)) *blockRig {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	blk, err := NewBlock(f, readOnly, "vessel-test-serial-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range setup {
		f(blk)
	}
	mem := newTestMem(t)
	m, err := NewMMIO(blk, mem, &devices.CountingInterrupt{}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	d := newDriver(t, mem)
	d.cfg.Size = qsize
	if st := initDevice(t, m, d, FeatureVersion1|FeatureEventIdx|FeatureIndirectDesc); st&StatusDriverOK == 0 {
		t.Fatalf("status %#x", st)
	}
	return &blockRig{t: t, m: m, d: d, mem: mem, path: path, blk: blk}
}

// do submits a request and returns the status byte, the used length and
// the writable buffers' addresses.
func (r *blockRig) do(segs ...seg) (status byte, used uint32, addrs []uint64) {
	r.t.Helper()
	head, addrs := r.d.chain(segs...)
	r.d.offer(head)
	wr(r.m, RegQueueNotify, 0)
	r.n++
	waitFor(r.t, "block request", func() bool { return r.d.usedIdx() == r.n })
	_, used = r.d.used(r.n - 1)
	st := make([]byte, 1)
	last := segs[len(segs)-1]
	r.mem.ReadAt(st, addrs[len(addrs)-1]+uint64(last.n)-1)
	return st[0], used, addrs
}

func TestBlockReadWrite(t *testing.T) {
	r := newBlockRig(t, 1<<20, false)
	data := bytes.Repeat([]byte("vessel!!"), 128) // 1 KiB
	if st, used, _ := r.do(seg{data: blkHeader(blkTOut, 2)}, seg{data: data}, seg{n: 1, write: true}); st != blkSOK || used != 1 {
		t.Fatalf("write: status %d used %d", st, used)
	}
	img, _ := os.ReadFile(r.path)
	if !bytes.Equal(img[1024:2048], data) {
		t.Error("the image does not hold the written sectors")
	}
	st, used, addrs := r.do(seg{data: blkHeader(blkTIn, 2)}, seg{n: 512, write: true}, seg{n: 513, write: true})
	if st != blkSOK || used != 1025 {
		t.Fatalf("read: status %d used %d", st, used)
	}
	got := make([]byte, 1024)
	r.mem.ReadAt(got[:512], addrs[1])
	r.mem.ReadAt(got[512:], addrs[2])
	if !bytes.Equal(got, data) {
		t.Error("read back different data")
	}
	if st, _, _ := r.do(seg{data: blkHeader(blkTFlush, 0)}, seg{n: 1, write: true}); st != blkSOK {
		t.Errorf("flush status %d", st)
	}
	st, _, addrs = r.do(seg{data: blkHeader(blkTGetID, 0)}, seg{n: 21, write: true})
	id := make([]byte, 20)
	r.mem.ReadAt(id, addrs[1])
	if st != blkSOK || string(id) != "vessel-test-serial-0" {
		t.Errorf("get id: status %d id %q", st, id)
	}
}

func TestBlockBadRequests(t *testing.T) {
	r := newBlockRig(t, 1<<20, false)
	sectors := uint64(1 << 20 / 512)
	for name, segs := range map[string][]seg{
		"read past the end":    {{data: blkHeader(blkTIn, sectors)}, {n: 513, write: true}},
		"read straddling end":  {{data: blkHeader(blkTIn, sectors-1)}, {n: 1025, write: true}},
		"sector overflow":      {{data: blkHeader(blkTIn, 1<<63)}, {n: 513, write: true}},
		"write past the end":   {{data: blkHeader(blkTOut, sectors)}, {n: 512}, {n: 1, write: true}},
		"partial sector write": {{data: blkHeader(blkTOut, 0)}, {n: 100}, {n: 1, write: true}},
		"short id buffer":      {{data: blkHeader(blkTGetID, 0)}, {n: 5, write: true}},
	} {
		if st, _, _ := r.do(segs...); st != blkSIOErr {
			t.Errorf("%s: status %d, want IOERR", name, st)
		}
	}
	if st, _, _ := r.do(seg{data: blkHeader(99, 0)}, seg{n: 1, write: true}); st != blkSUnsupp {
		t.Errorf("unknown type: status %d, want UNSUPP", st)
	}
	if r.m.Status()&StatusNeedsReset != 0 {
		t.Error("I/O errors must not reset the device")
	}
	// A request without a status byte breaks the protocol itself.
	head, _ := r.d.chain(seg{data: blkHeader(blkTIn, 0)})
	r.d.offer(head)
	wr(r.m, RegQueueNotify, 0)
	waitFor(t, "NEEDS_RESET", func() bool { return r.m.Status()&StatusNeedsReset != 0 })
}

func TestBlockReadOnly(t *testing.T) {
	r := newBlockRig(t, 64<<10, true)
	wr(r.m, regDeviceFeatSel, 0)
	if rd(r.m, regDeviceFeatures)&blkFRO == 0 {
		t.Error("read-only disk does not offer VIRTIO_BLK_F_RO")
	}
	if st, _, _ := r.do(seg{data: blkHeader(blkTOut, 0)}, seg{data: make([]byte, 512)}, seg{n: 1, write: true}); st != blkSIOErr {
		t.Errorf("write to a read-only disk: status %d, want IOERR", st)
	}
	if st, _, _ := r.do(seg{data: blkHeader(blkTIn, 0)}, seg{n: 513, write: true}); st != blkSOK {
		t.Errorf("read from a read-only disk: status %d", st)
	}
}

func TestBlockConfig(t *testing.T) {
	r := newBlockRig(t, 3<<20, false)
	lo, hi := rd(r.m, regConfig), rd(r.m, regConfig+4)
	if c := uint64(hi)<<32 | uint64(lo); c != 3<<20/512 {
		t.Errorf("capacity %d sectors", c)
	}
	// Reads past the configuration space read zero, never panic.
	b := make([]byte, 8)
	r.m.Read(regConfig+0xef8, b)
	if !bytes.Equal(b, make([]byte, 8)) {
		t.Errorf("config past the end reads %x", b)
	}
}

func TestBlockDiscard(t *testing.T) {
	r := newBlockRig(t, 1<<20, false)
	wr(r.m, regDeviceFeatSel, 0)
	if rd(r.m, regDeviceFeatures)&blkFDiscard == 0 {
		t.Skip("the file system of the test's temp dir cannot punch holes")
	}
	r.do(seg{data: blkHeader(blkTOut, 8)}, seg{data: bytes.Repeat([]byte{0xAA}, 4096)}, seg{n: 1, write: true})
	s := make([]byte, 16)
	binary.LittleEndian.PutUint64(s, 8)
	binary.LittleEndian.PutUint32(s[8:], 8)
	if st, _, _ := r.do(seg{data: blkHeader(blkTDiscard, 0)}, seg{data: s}, seg{n: 1, write: true}); st != blkSOK {
		t.Fatalf("discard status %d", st)
	}
	img, _ := os.ReadFile(r.path)
	if !bytes.Equal(img[4096:8192], make([]byte, 4096)) {
		t.Error("discarded range still holds data")
	}
}

func TestNewBlockOddSize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "odd.img")
	os.WriteFile(path, make([]byte, 1000), 0o644)
	f, _ := os.Open(path)
	defer f.Close()
	if _, err := NewBlock(f, true, ""); !errors.Is(err, ErrDiskSize) {
		t.Errorf("NewBlock(1000 bytes) = %v, want ErrDiskSize", err)
	}
}

// TestBlockSegMax sends requests of seg_max data segments and one more,
// each in a chain of exactly the queue's size (a header or the status
// byte sharing a descriptor with data makes room for the extra segment):
// the longer one must fail with VIRTIO_BLK_S_IOERR and touch nothing.
func TestBlockSegMax(t *testing.T) {
	const qsize = blkQueueSize
	data := func(n int, write bool) []seg {
		l := make([]seg, n)
		for i := range l {
			l[i] = seg{n: sectorSize, write: write}
			if !write {
				l[i] = seg{data: bytes.Repeat([]byte{byte(i + 1)}, sectorSize)}
			}
		}
		return l
	}
	for _, tc := range []struct {
		name string
		segs []seg
		want byte
	}{
		{"read seg_max", append(append([]seg{{data: blkHeader(blkTIn, 8)}}, data(blkSegMax, true)...), seg{n: 1, write: true}), blkSOK},
		{"read seg_max+1", append(append([]seg{{data: blkHeader(blkTIn, 8)}}, data(blkSegMax, true)...), seg{n: sectorSize + 1, write: true}), blkSIOErr},
		{"write seg_max", append(append([]seg{{data: blkHeader(blkTOut, 8)}}, data(blkSegMax, false)...), seg{n: 1, write: true}), blkSOK},
		{"write seg_max+1", append(append([]seg{{data: append(blkHeader(blkTOut, 8), make([]byte, sectorSize)...)}}, data(blkSegMax, false)...), seg{n: 1, write: true}), blkSIOErr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.segs) != qsize {
				t.Fatalf("chain of %d descriptors, want %d", len(tc.segs), qsize)
			}
			r := newBlockRigQ(t, 1<<20, false, qsize)
			if st, _, _ := r.do(tc.segs...); st != tc.want {
				t.Fatalf("status %d, want %d", st, tc.want)
			}
			img, err := os.ReadFile(r.path)
			if err != nil {
				t.Fatal(err)
			}
			wrote := !bytes.Equal(img, make([]byte, len(img)))
			if want := tc.want == blkSOK && tc.segs[0].data[0] == blkTOut; wrote != want {
				t.Errorf("image written: %v, want %v", wrote, want)
			}
		})
	}
}

// TestVectoredManyBuffers transfers more buffers than one preadv or
// pwritev takes (IOV_MAX).
func TestVectoredManyBuffers(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const n, size = 2*iovMax + 3, 8
	out := make([][]byte, n)
	in := make([][]byte, n)
	for i := range out {
		out[i] = bytes.Repeat([]byte{byte(i)}, size)
		in[i] = make([]byte, size)
	}
	if st, _ := vectored(unix.Pwritev, int(f.Fd()), append([][]byte(nil), out...), 512); st != blkSOK {
		t.Fatalf("pwritev of %d buffers: status %d", n, st)
	}
	if st, _ := vectored(unix.Preadv, int(f.Fd()), append([][]byte(nil), in...), 512); st != blkSOK {
		t.Fatalf("preadv of %d buffers: status %d", n, st)
	}
	for i := range in {
		if !bytes.Equal(in[i], out[i]) {
			t.Fatalf("buffer %d read back %x, want %x", i, in[i], out[i])
		}
	}
}

// TestBlockResetDuringStalledIO resets the device (a vCPU writing 0 to
// the status register) while a request is blocked in host I/O, as on a
// stalled file system: the reset must return without it, the request
// must not reach the used ring afterwards, and Close must wait for it.
// Before the fix the reset, and with it the vCPU, waited for the I/O.
func TestBlockResetDuringStalledIO(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var returned atomic.Bool
	r := newBlockRigQ(t, 1<<20, false, testQSize, func(b *Block) {
		b.resetWait = time.Millisecond // the read never ends before release
		b.readv = func(fd int, bufs [][]byte, off int64) (int, error) {
			defer returned.Store(true)
			once.Do(func() { close(entered) })
			<-release
			return unix.Preadv(fd, bufs, off)
		}
	})
	head, _ := r.d.chain(seg{data: blkHeader(blkTIn, 0)}, seg{n: sectorSize, write: true}, seg{n: 1, write: true})
	r.d.offer(head)
	wr(r.m, RegQueueNotify, 0)
	<-entered
	wr(r.m, regStatus, 0)
	if st := r.m.Status(); st != 0 {
		t.Errorf("status %#x after reset, want 0", st)
	}
	close(release)
	r.blk.Close()
	if !returned.Load() {
		t.Error("Close returned while the abandoned request was still in host I/O")
	}
	if n := r.d.usedIdx(); n != 0 {
		t.Errorf("used index %d: the abandoned request was completed after the reset", n)
	}
}

// TestBlockHostError: a write the host file system refuses (full) is an
// I/O error to the guest, and the first one, only, is reported with the
// disk's serial and the host's error.
func TestBlockHostError(t *testing.T) {
	var lines []string
	var mu sync.Mutex
	r := newBlockRigQ(t, 1<<20, false, 16, func(b *Block) {
		b.writev = func(int, [][]byte, int64) (int, error) { return 0, unix.ENOSPC }
		b.SetLog(func(format string, a ...any) {
			mu.Lock()
			lines = append(lines, fmt.Sprintf(format, a...))
			mu.Unlock()
		})
	})
	for i := 0; i < 3; i++ {
		if st, _, _ := r.do(seg{data: blkHeader(blkTOut, 2)}, seg{data: make([]byte, 512)}, seg{n: 1, write: true}); st != blkSIOErr {
			t.Fatalf("write %d on a full host file system: status %d, want IOERR", i, st)
		}
	}
	if st, _, _ := r.do(seg{data: blkHeader(blkTIn, 2)}, seg{n: 512, write: true}, seg{n: 1, write: true}); st != blkSOK {
		t.Errorf("read: status %d", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(lines) != 1 || !strings.Contains(lines[0], "no space left on device") || !strings.Contains(lines[0], "vessel-test-serial") {
		t.Errorf("reports: %q, want one naming the disk and ENOSPC", lines)
	}
}
