package vmm

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vesselvm/vessel/devices"
	"github.com/vesselvm/vessel/devices/virtio"
	"github.com/vesselvm/vessel/guestmem"
)

// lineLog collects the VMM's log lines.
type lineLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestCloseStuckDevice closes a VM whose device never finishes closing
// (its backend blocked in host I/O): Close must return, say why on the
// log, and leave guest memory mapped for the goroutine still using it.
// Before the fix Close waited for the device for good.
func TestCloseStuckDevice(t *testing.T) {
	for _, tc := range []struct {
		name  string
		stuck bool
	}{
		{"device closes", false},
		{"device stuck", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem, err := guestmem.New([]guestmem.RegionSpec{{GPA: 0, Size: 1 << 20}})
			if err != nil {
				t.Fatal(err)
			}
			m, err := virtio.NewMMIO(virtio.NewRNG(), mem, &devices.CountingInterrupt{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			release := make(chan struct{})
			closed := make(chan struct{})
			closer := func() {
				defer close(closed)
				if tc.stuck {
					<-release
				}
			}
			var log lineLog
			v := &VM{cfg: Config{Log: &log}, mem: mem, virtio: []*virtioDev{{t: m, closer: closer}}}
			if tc.stuck {
				// It never finishes: no point waiting long.
				v.stopWait = time.Millisecond
			}
			// A device that closes gets the default bound, far more
			// than it needs, so it is never taken for a stuck one.
			v.Close()
			if tc.stuck {
				if v.mem == nil {
					t.Error("Close unmapped guest memory a stuck device may still use")
				}
				if !strings.Contains(log.String(), "did not stop") {
					t.Errorf("log %q does not report the stuck device", log.String())
				}
				close(release)
				<-closed
				mem.Close()
				return
			}
			if v.mem != nil {
				t.Error("Close left guest memory mapped")
			}
		})
	}
}
