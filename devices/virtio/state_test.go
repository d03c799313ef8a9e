package virtio

import (
	"reflect"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/devices"
)

// A quiesced entropy device restored on a new transport over the same
// guest memory goes on where it stopped: the next request lands in the
// next used-ring entry, and the registers read as before.
func TestQuiesceRestore(t *testing.T) {
	for _, feats := range []uint64{0, FeatureEventIdx} {
		mem := newTestMem(t)
		a, err := NewMMIO(NewRNG(), mem, &devices.CountingInterrupt{}, t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		d := newDriver(t, mem)
		startDriver(t, a, feats, d)
		serve := func(m *MMIO, i int) {
			t.Helper()
			head, _ := d.chain(seg{n: 32, write: true})
			d.offer(head)
			wr(m, RegQueueNotify, 0)
			waitFor(t, "used buffer", func() bool { return d.usedIdx() == uint16(i+1) })
			if id, n := d.used(uint16(i)); id != uint32(head) || n != 32 {
				t.Fatalf("used entry %d = %d/%d, want %d/32", i, id, n, head)
			}
		}
		serve(a, 0)
		serve(a, 1)
		st := a.Quiesce()
		if st.Queues[0].NextUsed != 2 || st.Queues[0].NextAvail != 2 || !st.Queues[0].Ready {
			t.Fatalf("quiesced queue %+v, want ready at 2/2", st.Queues[0])
		}
		// Offered while quiesced: the restored device takes it.
		head, _ := d.chain(seg{n: 32, write: true})
		d.offer(head)

		b, err := NewMMIO(NewRNG(), mem, &devices.CountingInterrupt{}, t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if err := b.Restore(st); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "request offered while quiesced", func() bool { return d.usedIdx() == 3 })
		serve(b, 3)
		for _, r := range []uint64{regStatus, regQueueReady, regInterruptStat} {
			if x, y := rd(a, r), rd(b, r); x != y && r != regInterruptStat {
				t.Errorf("register %#x reads %#x restored, %#x before", r, y, x)
			}
		}
		// The quiesced transport itself resumes too.
		if err := a.Restore(a.Quiesce()); err != nil {
			t.Fatal(err)
		}
		want := st
		want.Queues = []QueueState{st.Queues[0]}
		want.Queues[0].NextAvail, want.Queues[0].NextUsed = 4, 4
		if got := a.Quiesce(); !reflect.DeepEqual(got, want) {
			t.Errorf("state of an idle resumed transport %+v, want %+v", got, want)
		}
	}
}

func TestRestoreRefuses(t *testing.T) {
	mem := newTestMem(t)
	good := TransportState{
		DeviceType: TypeRNG, Status: StatusAcknowledge | StatusDriver | StatusFeaturesOK | StatusDriverOK,
		DrvFeatures: FeatureVersion1,
		Queues:      []QueueState{{Size: testQSize, Desc: testDesc, Driver: testAvail, Device: testUsed, Ready: true}},
	}
	for _, tc := range []struct {
		name, want string
		edit       func(*TransportState)
	}{
		{"another device type", "device type", func(s *TransportState) { s.DeviceType = TypeBlock }},
		{"queue count", "queues", func(s *TransportState) { s.Queues = append(s.Queues, s.Queues[0]) }},
		{"unknown status bits", "unknown bits", func(s *TransportState) { s.Status |= 0x10 }},
		{"features never offered", "features", func(s *TransportState) { s.DrvFeatures |= 1 << 40 }},
		{"legacy driver", "features", func(s *TransportState) { s.DrvFeatures = 0 }},
		{"DRIVER_OK alone", "FEATURES_OK", func(s *TransportState) { s.Status = StatusDriverOK }},
		{"interrupt bits", "interrupt status", func(s *TransportState) { s.IntStatus = 4 }},
		{"queue too large", "maximum", func(s *TransportState) { s.Queues[0].Size = 1024 }},
		{"in flight beyond the size", "in flight", func(s *TransportState) { s.Queues[0].NextAvail = 100 }},
		{"ring outside RAM", "not in guest RAM", func(s *TransportState) { s.Queues[0].Desc = 1 << 40 }},
		{"size not a power of two", "power of two", func(s *TransportState) { s.Queues[0].Size = 3 }},
		{"queue not ready", "not enabled", func(s *TransportState) { s.Queues[0].Ready = false }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := good
			st.Queues = append([]QueueState(nil), good.Queues...)
			tc.edit(&st)
			m, err := NewMMIO(NewRNG(), mem, nil, t.Logf)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			err = m.Restore(st)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Restore = %v, want an error with %q", err, tc.want)
			}
		})
	}
	m, err := NewMMIO(NewRNG(), mem, nil, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Restore(good); err != nil {
		t.Fatalf("the good state: %v", err)
	}
}

// A vsock device quiesced and restored drops the old VM's connections
// and tells the driver with a transport-reset event; the restored device
// serves new connections.
func TestVsockRestoreTransportReset(t *testing.T) {
	g := newVsGuest(t, vsOpts{})
	if got := g.ev.usedIdx(); got != 0 {
		t.Fatalf("event queue used %d before any restore", got)
	}
	st := g.m.Quiesce()
	if err := g.m.Restore(st); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "transport reset event", func() bool { return g.ev.usedIdx() == 1 })
	id, n := g.ev.used(0)
	ev, _ := g.mem.Uint32(vsEvBase + uint64(id)*16)
	if n != 4 || ev != vsockEventTransportReset {
		t.Errorf("event %d (%d bytes), want TRANSPORT_RESET (4 bytes)", ev, n)
	}
	if g.needsReset() {
		t.Fatal("device needs reset after restore")
	}
	// A guest connection to the host works on the restored device.
	ln := g.hostListen(1234)
	defer ln.Close()
	g.send(vsockHdr{srcCID: vsTestCID, dstCID: vsockHostCID, srcPort: 5000, dstPort: 1234, typ: vsockTypeStream, op: vsockOpRequest, bufAlloc: 65536}, nil)
	if h, _ := g.recv(); h.op != vsockOpResponse {
		t.Fatalf("answer to a request after restore: op %d, want RESPONSE", h.op)
	}
}
