package tap

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/vesselvm/vessel/devices/virtio"
)

func TestBadName(t *testing.T) {
	for _, name := range []string{"", "a-name-that-is-too-long"} {
		if _, err := Open(name); err == nil {
			t.Errorf("Open(%q) succeeded", name)
		}
	}
}

// needRoot skips tests that create TAP devices without CAP_NET_ADMIN; the
// end-to-end tests (run as root in the test platform) always do it.
func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating a TAP device needs root")
	}
}

func TestOpenCreatesAndRemoves(t *testing.T) {
	needRoot(t)
	const name = "vesseltest0"
	tp, err := Open(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := net.InterfaceByName(name); err != nil {
		t.Errorf("no interface %s after Open: %v", name, err)
	}
	if _, err := Open(name); !errors.Is(err, ErrBusy) {
		t.Errorf("second Open: %v, want ErrBusy", err)
	}
	for _, f := range []uint64{0, featGuestCsum, featGuestCsum | featGuestTSO4 | featGuestTSO6} {
		if err := tp.SetOffloads(f); err != nil {
			t.Errorf("SetOffloads(%#x): %v", f, err)
		}
	}
	// The interface is down: nothing arrives, and the deadline ends the
	// wait.
	tp.SetDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := tp.ReadFrame(make([]byte, 2048)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read on an idle tap: %v", err)
	}
	tp.SetDeadline(time.Time{})
	frame := make([]byte, vnetHdrSize+60)
	copy(frame[vnetHdrSize:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0, 0, 0, 1, 0x88, 0xb5})
	if err := tp.WriteFrame([][]byte{frame[:vnetHdrSize], frame[vnetHdrSize:]}); !errors.Is(err, virtio.ErrNetDown) {
		t.Errorf("write a frame while the interface is down: %v, want ErrNetDown", err)
	}
	if err := tp.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.InterfaceByName(name); err == nil {
		t.Errorf("interface %s left behind after Close", name)
	}
}
