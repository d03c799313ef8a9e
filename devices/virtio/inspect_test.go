package virtio

import (
	"strings"
	"testing"

	"github.com/vesselvm/vessel/devices"
)

// TestInspect: Inspect reads the rings the driver and device share
// without changing them, and String says what a diagnosis needs.
func TestInspect(t *testing.T) {
	r := newBlockRig(t, 1<<20, false)
	if st, _, _ := r.do(seg{data: blkHeader(blkTIn, 0)}, seg{n: 512, write: true}, seg{n: 1, write: true}); st != blkSOK {
		t.Fatalf("read: status %d", st)
	}
	r.d.put16(r.d.cfg.Driver+4+2*uint64(r.d.cfg.Size), 7) // used_event
	v := r.m.Inspect()
	if len(v.Queues) != 1 {
		t.Fatalf("queues: %+v", v.Queues)
	}
	q := v.Queues[0]
	if !q.Ready || q.Size != r.d.cfg.Size || q.AvailIdx != 1 || q.UsedIdx != 1 || q.UsedEvent != 7 || q.Err != "" {
		t.Errorf("queue view %+v: want ready, size %d, avail 1, used 1, used_event 7", q, r.d.cfg.Size)
	}
	if !v.EventIdx || v.Status&StatusDriverOK == 0 || v.IntStatus&1 == 0 || v.Stats.Interrupts == 0 {
		t.Errorf("transport view %+v: want EVENT_IDX, DRIVER_OK, a used-buffer interrupt raised", v)
	}
	s := v.String()
	for _, want := range []string{"block status 0xf int_status 0x1", "q0 avail 1 used 1 used_event 7 avail_event "} {
		if !strings.Contains(s, want) {
			t.Errorf("%q lacks %q", s, want)
		}
	}
	if got := r.d.usedIdx(); got != 1 {
		t.Errorf("Inspect changed the used index to %d", got)
	}
}

// TestInspectHostileQueue: a queue the driver enabled, before DRIVER_OK,
// with rings at addresses that wrap or lie outside RAM is reported as
// unreadable, not read at a wrapped address.
func TestInspectHostileQueue(t *testing.T) {
	for _, tc := range []struct {
		name         string
		driver, dev  uint64
		wantErrSnips string
	}{
		{"wrapping", ^uint64(0) - 1, ^uint64(0) - 3, "overflow"},
		{"outside RAM", 1 << 60, 1 << 60, ""},
	} {
		m, err := NewMMIO(NewRNG(), newTestMem(t), &devices.CountingInterrupt{}, t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		wr(m, regQueueSel, 0)
		wr(m, regQueueNum, 0xffff)
		wr(m, regQueueDrvLow, uint32(tc.driver))
		wr(m, regQueueDrvHigh, uint32(tc.driver>>32))
		wr(m, regQueueDevLow, uint32(tc.dev))
		wr(m, regQueueDevHigh, uint32(tc.dev>>32))
		wr(m, regQueueReady, 1)
		v := m.Inspect()
		if q := v.Queues[0]; !q.Ready || q.Err == "" || !strings.Contains(q.Err, tc.wantErrSnips) {
			t.Errorf("%s: queue view %+v, want an error", tc.name, q)
		}
		if s := v.String(); !strings.Contains(s, "q0: ") {
			t.Errorf("%s: %q does not name the unreadable queue", tc.name, s)
		}
		m.Close()
	}
}
