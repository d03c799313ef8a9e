package virtio

import (
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vesselvm/vessel/devices"
)

func rd(t *MMIO, off uint64) uint32 {
	b := make([]byte, 4)
	t.Read(off, b)
	return binary.LittleEndian.Uint32(b)
}

func wr(t *MMIO, off uint64, v uint32) {
	b := make([]byte, 4)
	binary.LittleEndian.PutUint32(b, v)
	t.Write(off, b)
}

// logRecorder collects the transport's log lines.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) logf(format string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, a...))
}

func (l *logRecorder) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// initDevice runs the driver initialisation of virtio 1.2 §3.1.1 with
// queue 0 configured as d.cfg, and returns the final status.
func initDevice(t *testing.T, m *MMIO, d *driver, features uint64) uint32 {
	t.Helper()
	if rd(m, regMagic) != mmioMagic || rd(m, regVersion) != 2 {
		t.Fatal("bad magic or version")
	}
	wr(m, regStatus, 0)
	wr(m, regStatus, StatusAcknowledge)
	wr(m, regStatus, StatusAcknowledge|StatusDriver)
	wr(m, regDeviceFeatSel, 1)
	if hi := rd(m, regDeviceFeatures); hi&1 == 0 {
		t.Fatal("VERSION_1 not offered")
	}
	wr(m, regDriverFeatSel, 0)
	wr(m, regDriverFeatures, uint32(features))
	wr(m, regDriverFeatSel, 1)
	wr(m, regDriverFeatures, uint32(features>>32))
	wr(m, regStatus, StatusAcknowledge|StatusDriver|StatusFeaturesOK)
	if rd(m, regStatus)&StatusFeaturesOK == 0 {
		return rd(m, regStatus)
	}
	wr(m, regQueueSel, 0)
	if max := rd(m, regQueueNumMax); max == 0 {
		t.Fatal("queue 0 has no size")
	}
	wr(m, regQueueNum, uint32(d.cfg.Size))
	wr(m, regQueueDescLow, uint32(d.cfg.Desc))
	wr(m, regQueueDescHigh, uint32(d.cfg.Desc>>32))
	wr(m, regQueueDrvLow, uint32(d.cfg.Driver))
	wr(m, regQueueDrvHigh, uint32(d.cfg.Driver>>32))
	wr(m, regQueueDevLow, uint32(d.cfg.Device))
	wr(m, regQueueDevHigh, uint32(d.cfg.Device>>32))
	wr(m, regQueueReady, 1)
	wr(m, regStatus, StatusAcknowledge|StatusDriver|StatusFeaturesOK|StatusDriverOK)
	return rd(m, regStatus)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestMMIORNG(t *testing.T) {
	for _, feats := range []uint64{FeatureVersion1, FeatureVersion1 | FeatureEventIdx | FeatureIndirectDesc} {
		t.Run(fmt.Sprintf("features=%#x", feats), func(t *testing.T) {
			mem := newTestMem(t)
			irq := &devices.CountingInterrupt{}
			m, err := NewMMIO(NewRNG(), mem, irq, t.Logf)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if rd(m, regDeviceID) != TypeRNG {
				t.Fatal("device id")
			}
			d := newDriver(t, mem)
			if st := initDevice(t, m, d, feats); st&StatusDriverOK == 0 || st&StatusNeedsReset != 0 {
				t.Fatalf("status %#x after init", st)
			}
			for i := 0; i < 3; i++ {
				head, addrs := d.chain(seg{n: 64, write: true})
				d.offer(head)
				wr(m, RegQueueNotify, 0) // no ioeventfd here: the trap path
				waitFor(t, "used buffer", func() bool { return d.usedIdx() == uint16(i+1) })
				if id, n := d.used(uint16(i)); id != uint32(head) || n != 64 {
					t.Errorf("used %d/%d", id, n)
				}
				b := make([]byte, 64)
				mem.ReadAt(b, addrs[0])
				if strings.Count(string(b), "\x00") > 16 {
					t.Errorf("not random: %x", b)
				}
			}
			waitFor(t, "interrupt", func() bool { return irq.Count() > 0 })
			if rd(m, regInterruptStat)&interruptUsed == 0 {
				t.Error("interrupt status lacks the used-buffer bit")
			}
			wr(m, regInterruptACK, interruptUsed)
			if rd(m, regInterruptStat) != 0 {
				t.Error("ACK did not clear the interrupt status")
			}
		})
	}
}

func TestMMIOFeatureNegotiation(t *testing.T) {
	mem := newTestMem(t)
	m, _ := NewMMIO(NewRNG(), mem, nil, t.Logf)
	defer m.Close()
	d := newDriver(t, mem)
	// A legacy driver (no VERSION_1) and one asking for bits never
	// offered are both refused at FEATURES_OK.
	for _, f := range []uint64{0, FeatureVersion1 | 1<<5} {
		if st := initDevice(t, m, d, f); st&StatusFeaturesOK != 0 {
			t.Errorf("features %#x accepted: status %#x", f, st)
		}
	}
}

// TestMMIOHostile programs broken queues and notifies at bad times: the
// device must survive, set NEEDS_RESET, log once, and work again after a
// reset.
func TestMMIOHostile(t *testing.T) {
	mem := newTestMem(t)
	irq := &devices.CountingInterrupt{}
	log := &logRecorder{}
	m, err := NewMMIO(NewRNG(), mem, irq, log.logf)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	// Notifications and odd accesses before any setup.
	wr(m, RegQueueNotify, 0)
	wr(m, RegQueueNotify, 77)
	m.Read(regStatus, make([]byte, 3))
	m.Write(regStatus, make([]byte, 1))
	m.Read(0xfff0, make([]byte, 8))
	wr(m, regQueueSel, 9)
	wr(m, regQueueNum, 8)
	if rd(m, regQueueNumMax) != 0 {
		t.Error("a queue that does not exist has a size")
	}

	d := newDriver(t, mem)
	d.cfg.Size = 3 // not a power of two
	st := initDevice(t, m, d, FeatureVersion1)
	if st&StatusNeedsReset == 0 || st&StatusDriverOK != 0 {
		t.Fatalf("status %#x: want NEEDS_RESET without DRIVER_OK", st)
	}
	if irq.Count() == 0 || rd(m, regInterruptStat)&interruptConfig == 0 {
		t.Error("no configuration interrupt for NEEDS_RESET")
	}

	// A working queue, then a looping chain at run time.
	d = newDriver(t, mem)
	if st := initDevice(t, m, d, FeatureVersion1|FeatureEventIdx); st&StatusNeedsReset != 0 {
		t.Fatalf("status %#x after reset and a good init", st)
	}
	d.writeDesc(testDesc, 0, bufBase, 8, descFNext|descFWrite, 0)
	d.offer(0)
	wr(m, RegQueueNotify, 0)
	waitFor(t, "NEEDS_RESET", func() bool { return rd(m, regStatus)&StatusNeedsReset != 0 })
	// More notifications on the failed device do nothing.
	wr(m, RegQueueNotify, 0)
	wr(m, regStatus, 0) // reset
	if rd(m, regStatus) != 0 {
		t.Error("reset did not clear the status")
	}
	lines := log.all()
	if len(lines) != 2 || !strings.Contains(lines[0], "not a power of two") || !strings.Contains(lines[1], "loops") {
		t.Errorf("log lines %q: want one per failure", lines)
	}
}

// gateDev is a device whose Reset waits until the test opens its gate and
// which counts its activations that have not been reset yet.
type gateDev struct {
	entered chan struct{} // one value per Reset called
	gate    chan struct{} // closed to let Resets return

	mu            sync.Mutex
	live, maxLive int
}

func (g *gateDev) Type() uint32                     { return TypeRNG }
func (g *gateDev) Features() uint64                 { return 0 }
func (g *gateDev) QueueMaxSizes() []uint16          { return []uint16{testQSize} }
func (g *gateDev) ReadConfig(off uint64, b []byte)  {}
func (g *gateDev) WriteConfig(off uint64, b []byte) {}
func (g *gateDev) Activate(*Queues) error           { g.add(1); return nil }
func (g *gateDev) Reset()                           { g.entered <- struct{}{}; <-g.gate; g.add(-1) }
func (g *gateDev) counts() (live, maxLive int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.live, g.maxLive
}
func (g *gateDev) add(n int) {
	g.mu.Lock()
	g.live += n
	g.maxLive = max(g.maxLive, g.live)
	g.mu.Unlock()
}

// TestMMIOResetRace has one vCPU reset the device while the device's Reset
// is still stopping it, and another reset and initialise it meanwhile:
// the transport must ignore the second driver until the reset is done, so
// that the device is never activated twice at once.
func TestMMIOResetRace(t *testing.T) {
	mem := newTestMem(t)
	dev := &gateDev{entered: make(chan struct{}, 8), gate: make(chan struct{})}
	m, err := NewMMIO(dev, mem, nil, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	d := newDriver(t, mem)
	if st := initDevice(t, m, d, FeatureVersion1); st&StatusDriverOK == 0 {
		t.Fatalf("status %#x after init", st)
	}

	resetDone := make(chan struct{})
	go func() {
		wr(m, regStatus, 0) // vCPU 0: blocks until the gate opens
		close(resetDone)
	}()
	<-dev.entered
	// vCPU 1 resets and initialises the device while vCPU 0's reset
	// waits for the device: none of it may take effect.
	wr(m, regStatus, 0)
	wr(m, regStatus, StatusAcknowledge)
	wr(m, regStatus, StatusAcknowledge|StatusDriver)
	wr(m, regDriverFeatSel, 1)
	wr(m, regDriverFeatures, uint32(FeatureVersion1>>32))
	wr(m, regStatus, StatusAcknowledge|StatusDriver|StatusFeaturesOK)
	wr(m, regQueueSel, 0)
	wr(m, regQueueNum, uint32(d.cfg.Size))
	wr(m, regQueueDescLow, uint32(d.cfg.Desc))
	wr(m, regQueueDrvLow, uint32(d.cfg.Driver))
	wr(m, regQueueDevLow, uint32(d.cfg.Device))
	wr(m, regQueueReady, 1)
	wr(m, regStatus, StatusAcknowledge|StatusDriver|StatusFeaturesOK|StatusDriverOK)
	if st := rd(m, regStatus); st == 0 {
		t.Error("status reads 0 before the reset has finished")
	}
	if _, maxLive := dev.counts(); maxLive != 1 {
		t.Errorf("%d activations live at once during a reset", maxLive)
	}

	close(dev.gate)
	<-resetDone
	if live, _ := dev.counts(); live != 0 || rd(m, regStatus) != 0 {
		t.Fatalf("after the reset: %d activations live, status %#x", live, rd(m, regStatus))
	}
	if st := initDevice(t, m, d, FeatureVersion1); st&StatusDriverOK == 0 {
		t.Fatalf("status %#x after the reset and a new init", st)
	}
	if live, maxLive := dev.counts(); live != 1 || maxLive != 1 {
		t.Errorf("after a new init: %d activations live, at most %d", live, maxLive)
	}
}
