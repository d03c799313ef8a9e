package virtio

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vesselvm/vessel/devices"
)

// mmioOp is one register access of FuzzMMIO's guest: 8 bytes of input,
// a kind (bit 0: write; bits 1-2: access size 1, 2, 4 or 8 bytes), the
// register offset (two bytes, so the device's config space is reached
// too) and the value written.
const mmioOpLen = 8

// FuzzMMIO plays a guest driver that accesses the virtio-mmio transport
// registers (and each device's config space) in any order with any
// values, over fuzzed guest RAM: byte 0 picks the device (rng or block),
// then come up to 64 register accesses, then the RAM its queues live
// in. No panic, no hang, and the transport closes.
func FuzzMMIO(f *testing.F) {
	op := func(write bool, size int, off uint16, v uint32) []byte {
		b := make([]byte, mmioOpLen)
		if write {
			b[0] = 1
		}
		b[0] |= byte(map[int]int{1: 0, 2: 1, 4: 2, 8: 3}[size]) << 1
		binary.LittleEndian.PutUint16(b[1:], off)
		binary.LittleEndian.PutUint32(b[3:], v)
		return b
	}
	// A driver's bring-up of queue 0 (descriptors at 0x1000, driver area
	// at 0x2000, device area at 0x2800) and one notify.
	init := func(dev byte) []byte {
		b := []byte{dev}
		for _, o := range [][]byte{
			op(false, 4, 0x000, 0), // magic
			op(false, 4, 0x008, 0), // device ID
			op(true, 4, 0x070, StatusAcknowledge),
			op(true, 4, 0x070, StatusAcknowledge|StatusDriver),
			op(true, 4, 0x014, 1), // driver features, high word
			op(false, 4, 0x010, 0),
			op(true, 4, 0x024, 1),
			op(true, 4, 0x020, 1), // VERSION_1
			op(true, 4, 0x070, StatusAcknowledge|StatusDriver|StatusFeaturesOK),
			op(true, 4, 0x030, 0),      // queue 0
			op(true, 4, 0x038, 16),     // size
			op(true, 4, 0x080, 0x1000), // descriptors
			op(true, 4, 0x090, 0x2000), // driver area
			op(true, 4, 0x0a0, 0x2800), // device area
			op(true, 4, 0x044, 1),      // ready
			op(true, 4, 0x070, StatusAcknowledge|StatusDriver|StatusFeaturesOK|StatusDriverOK),
			op(false, 8, 0x100, 0), // config space
			op(true, 4, 0x050, 0),  // notify
			op(true, 4, 0x070, 0),  // reset
		} {
			b = append(b, o...)
		}
		return b
	}
	for _, dev := range []byte{0, 1} {
		f.Add(init(dev))
		seed := init(dev)
		ram := fuzzSeed(1)
		binary.LittleEndian.PutUint64(ram[0x1000:], 0x100)
		binary.LittleEndian.PutUint32(ram[0x1008:], 512)
		binary.LittleEndian.PutUint16(ram[0x100c:], 2) // device-writable
		f.Add(append(seed, ram...))
	}
	disk := filepath.Join(f.TempDir(), "disk")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 1 {
			return
		}
		var dev Device = NewRNG()
		if data[0]&4 != 0 {
			// The balloon discards what the guest names: fuzzing it
			// checks that no guest value reaches past its RAM.
			dev = NewBalloon(BalloonConfig{Reporting: true, DeflateOnOOM: true, StatsInterval: time.Millisecond})
		} else if data[0]&1 != 0 {
			fd, err := os.OpenFile(disk, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer fd.Close()
			blk, err := NewBlock(fd, data[0]&2 != 0, "fuzz")
			if err != nil {
				t.Fatal(err)
			}
			dev = blk
		}
		data = data[1:]
		n := min(len(data)/mmioOpLen, 64)
		ops, ram := data[:n*mmioOpLen], data[n*mmioOpLen:]
		mem := fuzzMem(t, ram)
		m, err := NewMMIO(dev, mem, &devices.CountingInterrupt{}, t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+mmioOpLen <= len(ops); i += mmioOpLen {
			o := ops[i : i+mmioOpLen]
			size := 1 << ((o[0] >> 1) & 3)
			off := uint64(binary.LittleEndian.Uint16(o[1:]))
			buf := make([]byte, 8)
			binary.LittleEndian.PutUint32(buf, binary.LittleEndian.Uint32(o[3:]))
			buf[4] = o[7]
			if o[0]&1 != 0 {
				m.Write(off, buf[:size])
			} else {
				m.Read(off, buf[:size])
			}
		}
		if err := m.Close(); err != nil {
			t.Logf("close: %v", err)
		}
	})
}
