package vmm

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hugelgupf/p9/p9"

	"github.com/vesselvm/vessel/devices"
	"github.com/vesselvm/vessel/devices/share"
	"github.com/vesselvm/vessel/devices/virtio"
	"github.com/vesselvm/vessel/guestmem"
)

// Guest layout of shareDevice's queue.
const (
	shareDesc  = 0x1000
	shareAvail = 0x3000
	shareUsed  = 0x4000
	shareReq   = 0x10000
	shareReply = 0x11000
)

// shareDevice attaches a 9P device serving a temporary directory to v,
// as a driver that set it up left it (restored from a transport state,
// without KVM), with req waiting in its queue unless req is nil.
func shareDevice(t *testing.T, v *VM, tag string, req []byte) *virtio.P9 {
	t.Helper()
	mem, err := guestmem.New([]guestmem.RegionSpec{{GPA: 0, Size: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	sh, err := share.New(t.TempDir(), true, share.NewFDBudget(64))
	if err != nil {
		t.Fatal(err)
	}
	dev, err := virtio.NewP9(tag, p9.NewServer(sh), nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := virtio.NewMMIO(dev, mem, &devices.CountingInterrupt{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); sh.Close() })
	if req != nil {
		// Two descriptors: the request, then room for the reply.
		var d [32]byte
		binary.LittleEndian.PutUint64(d[0:], shareReq)
		binary.LittleEndian.PutUint32(d[8:], uint32(len(req)))
		binary.LittleEndian.PutUint16(d[12:], 1) // VIRTQ_DESC_F_NEXT
		binary.LittleEndian.PutUint16(d[14:], 1)
		binary.LittleEndian.PutUint64(d[16:], shareReply)
		binary.LittleEndian.PutUint32(d[24:], 256)
		binary.LittleEndian.PutUint16(d[28:], 2) // VIRTQ_DESC_F_WRITE
		avail := []byte{0, 0, 1, 0, 0, 0}        // flags, idx 1, ring[0] = 0
		for _, w := range []struct {
			b   []byte
			gpa uint64
		}{{d[:], shareDesc}, {avail, shareAvail}, {req, shareReq}} {
			if _, err := mem.WriteAt(w.b, w.gpa); err != nil {
				t.Fatal(err)
			}
		}
	}
	err = m.Restore(virtio.TransportState{
		DeviceType:  virtio.TypeP9,
		Status:      virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK,
		DrvFeatures: virtio.FeatureVersion1 | virtio.Feature9PMountTag,
		Queues:      []virtio.QueueState{{Size: 16, Desc: shareDesc, Driver: shareAvail, Device: shareUsed, Ready: true}},
	})
	if err != nil {
		t.Fatal(err)
	}
	v.virtio = append(v.virtio, &virtioDev{t: m})
	v.cfg.Shares = append(v.cfg.Shares, Share{Tag: tag, Dir: "/somewhere"})
	return dev
}

// tversion is the first request of a mount: Tversion, 9P2000.L.
func tversion() []byte {
	body := binary.LittleEndian.AppendUint32(nil, 8192)
	body = binary.LittleEndian.AppendUint16(body, 8)
	body = append(body, "9P2000.L"...)
	msg := binary.LittleEndian.AppendUint32(nil, uint32(7+len(body)))
	msg = append(msg, 100) // Tversion
	msg = binary.LittleEndian.AppendUint16(msg, 0xFFFF)
	return append(msg, body...)
}

// TestSnapshotServedShare: a share whose device has only been set up by
// the guest's driver may be snapshotted; once the guest sent it a
// request (it mounted the share), Snapshot refuses, naming the share,
// and writes nothing. (A whole snapshot needs KVM: the e2e tests take
// those.)
func TestSnapshotServedShare(t *testing.T) {
	for _, tc := range []struct {
		name   string
		reqs   map[string][]byte // by tag; nil: probed only
		refuse string            // the refused share's tag, or ""
	}{
		{"probed only", map[string][]byte{"vessel-root": nil, "vessel-bind-0": nil}, ""},
		{"mounted", map[string][]byte{"vessel-root": nil, "vessel-bind-0": tversion()}, "vessel-bind-0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := &VM{stopped: make(chan struct{})}
			var devs []*virtio.P9
			for _, tag := range []string{"vessel-root", "vessel-bind-0"} {
				devs = append(devs, shareDevice(t, v, tag, tc.reqs[tag]))
			}
			deadline := time.Now().Add(5 * time.Second)
			for i, tag := range []string{"vessel-root", "vessel-bind-0"} {
				for tc.reqs[tag] != nil && !devs[i].Served() {
					if time.Now().After(deadline) {
						t.Fatalf("share %s never served its request", tag)
					}
					time.Sleep(time.Millisecond)
				}
			}
			err := v.checkSharesUnused()
			if tc.refuse == "" {
				if err != nil {
					t.Fatalf("checkSharesUnused: %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), `share "`+tc.refuse+`" was mounted by the guest`) {
				t.Fatalf("checkSharesUnused = %v, want ErrInvalidConfig naming share %q", err, tc.refuse)
			}
			dir := filepath.Join(t.TempDir(), "snap")
			if err := v.Snapshot(dir, SnapshotOptions{Version: "v1"}); !errors.Is(err, ErrNotPaused) {
				t.Fatalf("Snapshot of a running VM: %v, want ErrNotPaused", err)
			}
			if err := v.Pause(); err != nil {
				t.Fatal(err)
			}
			err = v.Snapshot(dir, SnapshotOptions{Version: "v1"})
			if err == nil || !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), `"`+tc.refuse+`"`) {
				t.Fatalf("Snapshot = %v, want ErrInvalidConfig naming share %q", err, tc.refuse)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the refused snapshot left %s: %v", dir, err)
			}
		})
	}
}
