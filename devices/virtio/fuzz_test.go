package virtio

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vesselvm/vessel/guestmem"
)

// Fuzzed guest RAM: fuzzRAM bytes (a sparse mapping), the input repeated
// over the first fuzzTiled of them, so that a short input describes
// indirect tables far larger than itself and than any queue (4096
// descriptors fill 64 KiB), and chains of buffers up to 4 GiB in all.
const (
	fuzzRAM   = 64 << 20
	fuzzTiled = 64 << 10
)

// fuzzMem returns fuzzed guest RAM holding data, repeated, at its start.
func fuzzMem(t *testing.T, data []byte) *guestmem.Memory {
	mem, err := guestmem.New([]guestmem.RegionSpec{{GPA: 0, Size: fuzzRAM}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	if len(data) == 0 {
		return mem
	}
	ram, err := mem.Slice(0, fuzzTiled)
	if err != nil {
		t.Fatal(err)
	}
	for n := copy(ram, data); n < len(ram); n *= 2 {
		copy(ram[n:], ram[:n])
	}
	return mem
}

// fuzzQueue builds a queue whose rings and descriptors come from the fuzz
// input: the first bytes choose the configuration (the rings in the first
// 64 KiB; bit 0 of byte 7 negotiates EVENT_IDX, bit 2 INDIRECT_DESC), the
// rest is guest RAM.
func fuzzQueue(t *testing.T, data []byte) (*Queue, bool) {
	if len(data) < 8 {
		return nil, false
	}
	mem := fuzzMem(t, data)
	cfg := QueueConfig{
		Size:   uint16(1) << (data[0] % 9), // 1..256
		Desc:   uint64(binary.LittleEndian.Uint16(data[1:])) &^ 15,
		Driver: uint64(binary.LittleEndian.Uint16(data[3:])) &^ 1,
		Device: uint64(binary.LittleEndian.Uint16(data[5:])) &^ 3,
	}
	var features uint64
	if data[7]&1 != 0 {
		features |= FeatureEventIdx
	}
	if data[7]&4 != 0 {
		features |= FeatureIndirectDesc
	}
	q, err := NewQueue(mem, cfg, 256, features)
	if err != nil {
		return nil, false
	}
	return q, true
}

// fuzzSeed returns a fuzz input for fuzzQueue with a 16-entry queue
// (descriptors at 0x1000, driver area at 0x2000, device area at 0x2800)
// and avail chains made available; the caller writes the descriptors.
func fuzzSeed(avail uint16) []byte {
	seed := make([]byte, 0x3000)
	seed[0] = 4 // size 16
	binary.LittleEndian.PutUint16(seed[1:], 0x1000)
	binary.LittleEndian.PutUint16(seed[3:], 0x2000)
	binary.LittleEndian.PutUint16(seed[5:], 0x2800)
	binary.LittleEndian.PutUint16(seed[0x2002:], avail)
	return seed
}

// FuzzQueue walks whatever chains a fuzzed guest offers and reads and
// writes them through the chain reader and writer: no panic, no hang, no
// access outside guest RAM, and no chain longer than the queue or than
// 4 GiB - 1 bytes (what a used element's length can say).
func FuzzQueue(f *testing.F) {
	seed := fuzzSeed(2)
	binary.LittleEndian.PutUint64(seed[0x1000:], 0x100)
	binary.LittleEndian.PutUint32(seed[0x1008:], 64)
	binary.LittleEndian.PutUint16(seed[0x100c:], descFNext)
	binary.LittleEndian.PutUint16(seed[0x100e:], 1)
	binary.LittleEndian.PutUint64(seed[0x1010:], 0x200)
	binary.LittleEndian.PutUint32(seed[0x1018:], 64)
	binary.LittleEndian.PutUint16(seed[0x101c:], descFWrite)
	f.Add(seed)
	// An indirect table of two zero-length descriptors at 0x1100, the
	// first chained to the second.
	seed = fuzzSeed(1)
	seed[7] = 4 // INDIRECT_DESC
	binary.LittleEndian.PutUint64(seed[0x1000:], 0x1100)
	binary.LittleEndian.PutUint32(seed[0x1008:], 32)
	binary.LittleEndian.PutUint16(seed[0x100c:], descFIndirect)
	binary.LittleEndian.PutUint16(seed[0x110c:], descFNext)
	binary.LittleEndian.PutUint16(seed[0x110e:], 1)
	f.Add(seed)
	// The same table in a queue of one descriptor: longer than the queue.
	seed = append([]byte(nil), seed...)
	seed[0] = 0 // size 1
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		q, ok := fuzzQueue(t, data)
		if !ok {
			return
		}
		for i := 0; i < 300; i++ {
			c, err := q.Pop()
			if err != nil || c == nil {
				return
			}
			if len(c.Descs) > int(q.Size()) {
				t.Fatalf("chain %d of %d descriptors in a queue of %d", c.Head, len(c.Descs), q.Size())
			}
			if n := c.ReadableLen() + c.WritableLen(); n >= 1<<32 {
				t.Fatalf("chain %d of %d bytes", c.Head, n)
			}
			// Read the first 64 KiB at most: the chain may describe
			// gigabytes of (sparse) RAM.
			buf := make([]byte, 4096)
			r := c.Reader()
			for range 16 {
				if _, err := r.Read(buf); err != nil {
					break
				}
			}
			w := c.Writer()
			w.Write(buf[:min(len(buf), int(c.WritableLen()))])
			if err := q.Push(c.Head, w.Written()); err != nil {
				t.Fatalf("push after a valid pop: %v", err)
			}
			q.NeedsInterrupt()
			q.EnableNotify()
		}
	})
}

// FuzzBlockRequest feeds fuzzed chains to the block device's request
// parser over a small image.
func FuzzBlockRequest(f *testing.F) {
	path := filepath.Join(f.TempDir(), "fuzz.img")
	if err := os.WriteFile(path, make([]byte, 8192), 0o644); err != nil {
		f.Fatal(err)
	}
	file, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		f.Fatal(err)
	}
	defer file.Close()
	blk, err := NewBlock(file, false, "fuzz")
	if err != nil {
		f.Fatal(err)
	}
	seed := fuzzSeed(1)
	// header (IN, sector 1) -> 512 data -> status
	binary.LittleEndian.PutUint64(seed[0x1000:], 0x100)
	binary.LittleEndian.PutUint32(seed[0x1008:], 16)
	binary.LittleEndian.PutUint16(seed[0x100c:], descFNext)
	binary.LittleEndian.PutUint16(seed[0x100e:], 1)
	binary.LittleEndian.PutUint64(seed[0x1010:], 0x400)
	binary.LittleEndian.PutUint32(seed[0x1018:], 513)
	binary.LittleEndian.PutUint16(seed[0x101c:], descFWrite)
	binary.LittleEndian.PutUint64(seed[0x108:], 1)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		q, ok := fuzzQueue(t, data)
		if !ok {
			return
		}
		for i := 0; i < 64; i++ {
			c, err := q.Pop()
			if err != nil || c == nil {
				return
			}
			n, err := blk.handle(c)
			if err != nil {
				return
			}
			if uint64(n) > c.WritableLen() {
				t.Fatalf("used length %d beyond the chain's %d writable bytes", n, c.WritableLen())
			}
			q.Push(c.Head, n)
		}
	})
}

// nullBackend takes every frame and has none to give.
type nullBackend struct {
	vnet   bool
	frames int
}

func (b *nullBackend) VnetHdr() bool                  { return b.vnet }
func (b *nullBackend) SetOffloads(uint64) error       { return nil }
func (b *nullBackend) ReadFrame([]byte) (int, error)  { select {} }
func (b *nullBackend) SetDeadline(time.Time) error    { return nil }
func (b *nullBackend) WriteFrame(bufs [][]byte) error { b.frames++; return nil }

// FuzzNetTX feeds fuzzed chains to the network device's transmit path,
// with and without a virtio-net header backend: a chain is sent, dropped
// or fails the device, never more than one frame per chain.
func FuzzNetTX(f *testing.F) {
	seed := fuzzSeed(1)
	binary.LittleEndian.PutUint64(seed[0x1000:], 0x100) // header + 60-byte frame
	binary.LittleEndian.PutUint32(seed[0x1008:], NetHdrSize+60)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		q, ok := fuzzQueue(t, data)
		if !ok {
			return
		}
		be := &nullBackend{vnet: data[7]&2 != 0}
		dev, err := NewNet(be, []byte{0x52, 0x54, 0, 0, 0, 1}, nil)
		if err != nil {
			t.Fatal(err)
		}
		r := &netRun{n: dev, vnet: be.vnet}
		for i := 0; i < 64; i++ {
			c, err := q.Pop()
			if err != nil || c == nil {
				return
			}
			before := be.frames
			n, err := r.handleTX(c)
			if err != nil {
				return
			}
			if n != 0 || be.frames > before+1 {
				t.Fatalf("transmit chain: used length %d, %d frames sent", n, be.frames-before)
			}
			q.Push(c.Head, n)
		}
	})
}
