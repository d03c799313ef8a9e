package usernet

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vesselvm/vessel/devices/virtio"
	"github.com/vesselvm/vessel/internal/testbin"
)

var testMAC = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 9}

// helper is the vessel-usernet the tests build.
var helper string

func TestMain(m *testing.M) {
	testbin.Main(func(path string) int {
		helper = path
		return m.Run()
	}, "github.com/vesselvm/vessel/cmd/vessel-usernet", HelperName)
}

func TestPublishAndClose(t *testing.T) {
	n, err := New(Config{MAC: testMAC, Helper: helper, Publish: []Publish{{Host: "127.0.0.1:0", GuestPort: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	addr := n.Addrs()[0].String()
	// Nothing answers in the guest: the host connection is closed.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("read data from a published port with no guest behind it")
	}
	c.Close()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Errorf("%s still listens after Close", addr)
	}
}

func TestPublishBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = New(Config{MAC: testMAC, Helper: helper, Publish: []Publish{{Host: "127.0.0.1:0", GuestPort: 1}, {Host: ln.Addr().String(), GuestPort: 80}}})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("publishing a busy port: %v", err)
	}
}

func TestBadMAC(t *testing.T) {
	if _, err := New(Config{MAC: net.HardwareAddr{1, 2}, Helper: helper}); err == nil {
		t.Fatal("accepted a 2-byte MAC")
	}
}

// The device's end reads frames the switch sends and is interrupted by a
// deadline, as the virtio-net device expects of a backend.
func TestFramesAndDeadline(t *testing.T) {
	n, err := New(Config{MAC: testMAC, Helper: helper})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// A broadcast ARP request for the gateway: the switch answers it.
	frame := make([]byte, 42)
	copy(frame[0:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(frame[6:], testMAC)
	frame[12], frame[13] = 0x08, 0x06 // ARP
	copy(frame[14:], []byte{0, 1, 8, 0, 6, 4, 0, 1})
	copy(frame[22:], testMAC)
	copy(frame[28:], net.ParseIP(GuestIP).To4())
	copy(frame[38:], net.ParseIP(GatewayIP).To4())
	if err := n.WriteFrame([][]byte{frame[:20], frame[20:]}); err != nil {
		t.Fatal(err)
	}
	n.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	k, err := n.ReadFrame(buf)
	if err != nil {
		t.Fatalf("no ARP reply: %v", err)
	}
	if k < 42 || buf[12] != 0x08 || buf[13] != 0x06 || buf[21] != 2 {
		t.Fatalf("not an ARP reply: % x", buf[:k])
	}
	n.SetDeadline(time.Now().Add(-time.Second))
	if _, err := n.ReadFrame(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	if err := n.WriteFrame([][]byte{make([]byte, maxFrame+1)}); err == nil {
		t.Error("sent a frame larger than the MTU allows")
	}
}

// A helper that cannot start, or fails at start, is one clear error, and
// nothing is left running.
func TestHelperFailure(t *testing.T) {
	if _, err := New(Config{MAC: testMAC, Helper: "/nonexistent/" + HelperName}); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing helper: %v", err)
	}
	fake := filepath.Join(t.TempDir(), "fake")
	os.WriteFile(fake, []byte("#!/bin/sh\necho 'cannot start: reasons' >&4\nexit 1\n"), 0o755)
	if _, err := New(Config{MAC: testMAC, Helper: fake}); err == nil || !strings.Contains(err.Error(), "cannot start: reasons") {
		t.Errorf("failing helper: %v", err)
	}
	crash := filepath.Join(t.TempDir(), "crash")
	os.WriteFile(crash, []byte("#!/bin/sh\nexit 3\n"), 0o755)
	if _, err := New(Config{MAC: testMAC, Helper: crash}); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("crashing helper: %v", err)
	}
}

// Start returns before the helper is ready: a slow helper's start-up
// overlaps the caller's work, Ready waits for it and says the same
// thereafter, and a network closed before it was ready ends cleanly.
func TestStartThenReady(t *testing.T) {
	slow := filepath.Join(t.TempDir(), "slow")
	os.WriteFile(slow, []byte("#!/bin/sh\nsleep 1\necho ok >&4\nexec 4>&-\nread x <&3\n"), 0o755)
	start := time.Now()
	n, err := Start(Config{MAC: testMAC, Helper: slow})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("Start waited %v for the helper", d)
	}
	if err := n.Ready(); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("Ready returned after %v, before the helper said ok", d)
	}
	if err := n.Ready(); err != nil {
		t.Errorf("second Ready: %v", err)
	}
	n.Close()

	failing := filepath.Join(t.TempDir(), "failing")
	os.WriteFile(failing, []byte("#!/bin/sh\necho 'no stack' >&4\nexit 1\n"), 0o755)
	n, err = Start(Config{MAC: testMAC, Helper: failing})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Ready(); err == nil || !strings.Contains(err.Error(), "no stack") {
		t.Errorf("Ready of a failing helper: %v", err)
	}
	if err := n.Ready(); err == nil || !strings.Contains(err.Error(), "no stack") {
		t.Errorf("second Ready of a failing helper: %v", err)
	}
	n.Close()

	n, err = Start(Config{MAC: testMAC, Helper: slow})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { n.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Close before Ready hung")
	}
	if err := n.Ready(); err == nil {
		t.Error("Ready after Close succeeded")
	}
}

// arpRequest is a broadcast ARP request from src for the gateway.
func arpRequest(src net.HardwareAddr) []byte {
	frame := make([]byte, 42)
	copy(frame[0:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(frame[6:], src)
	frame[12], frame[13] = 0x08, 0x06 // ARP
	copy(frame[14:], []byte{0, 1, 8, 0, 6, 4, 0, 1})
	copy(frame[22:], src)
	copy(frame[28:], net.ParseIP(GuestIP).To4())
	copy(frame[38:], net.ParseIP(GatewayIP).To4())
	return frame
}

// TestHostileFrames: frames the switch must not see are refused by the
// device's end: shorter than an Ethernet header (gvisor-tap-vsock's
// switch reads the source address out of range and its process
// panics; an empty message reads as the end of the stream), or from
// another source address than the guest's (the switch learns every
// source address it sees, a map a guest could grow without bound). The
// network still answers the guest afterwards.
func TestHostileFrames(t *testing.T) {
	n, err := New(Config{MAC: testMAC, Helper: helper})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	other := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 10}
	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"empty", nil},
		{"5 bytes", []byte{1, 2, 3, 4, 5}},
		{"13 bytes", arpRequest(testMAC)[:13]},
		{"another source address", arpRequest(other)},
	} {
		if err := n.WriteFrame([][]byte{tc.frame}); err == nil {
			t.Errorf("%s: frame sent to the switch", tc.name)
		}
	}
	if err := n.WriteFrame([][]byte{arpRequest(testMAC)}); err != nil {
		t.Fatal(err)
	}
	n.SetDeadline(time.Now().Add(time.Minute))
	buf := make([]byte, 2048)
	k, err := n.ReadFrame(buf)
	if err != nil {
		t.Fatalf("no ARP reply after the hostile frames: %v", err)
	}
	if k < 42 || buf[12] != 0x08 || buf[13] != 0x06 || buf[21] != 2 {
		t.Fatalf("not an ARP reply: % x", buf[:k])
	}
}

// FuzzCheckFrame: checkFrame takes any guest frame without panicking and
// passes exactly those with a whole Ethernet header from the guest's
// address.
func FuzzCheckFrame(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1, 2, 3, 4, 5})
	f.Add(arpRequest(testMAC))
	f.Add(arpRequest(testMAC)[:13])
	f.Add(arpRequest(net.HardwareAddr{0x52, 0x54, 0, 0, 0, 10}))
	f.Fuzz(func(t *testing.T, b []byte) {
		err := checkFrame(b, testMAC)
		ok := len(b) >= 14 && bytes.Equal(b[6:12], testMAC)
		if (err == nil) != ok {
			t.Fatalf("checkFrame(% x) = %v", b, err)
		}
	})
}

// TestHelperEndsWithSocket: the helper ends on its own when the VMM's
// end of the socket pair closes, as the kernel closes it when the VMM is
// killed (SIGKILL): no signal is involved (the helper gets no
// parent-death signal, and is in a process group of its own), it exits
// with status 0 once it reads the end of the socket.
func TestHelperEndsWithSocket(t *testing.T) {
	n, err := New(Config{MAC: testMAC, Helper: helper, Publish: []Publish{{Host: "127.0.0.1:0", GuestPort: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	if sa := n.helper.SysProcAttr; sa != nil && sa.Pdeathsig != 0 {
		t.Fatalf("the helper has a parent-death signal (%v): this test would not show what ends it", sa.Pdeathsig)
	}
	n.conn.Close() // only that: as the VMM's death does
	select {
	case <-n.exited:
	case <-time.After(helperStop):
		n.helper.Process.Kill()
		<-n.exited
		t.Fatalf("the helper still ran %v after its socket closed", helperStop)
	}
	if ps := n.helper.ProcessState; !ps.Exited() || ps.ExitCode() != 0 {
		t.Errorf("the helper ended with %v, want exit status 0", ps)
	}
}

// TestHelperCredential: with a Credential, the helper runs as that user
// with no capabilities, though its executable lies in a directory that
// user cannot reach (the test's build directory is root's, 0700).
func TestHelperCredential(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start the helper as another user")
	}
	n, err := New(Config{MAC: testMAC, Helper: helper, Publish: []Publish{{Host: "127.0.0.1:0", GuestPort: 80}},
		Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", n.helper.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	st := string(b)
	for _, want := range []string{"Uid:\t65534\t65534\t65534\t65534\n", "Gid:\t65534\t65534\t65534\t65534\n", "CapEff:\t0000000000000000\n"} {
		if !strings.Contains(st, want) {
			t.Errorf("the helper's status lacks %q:\n%s", want, st)
		}
	}
	for _, l := range strings.Split(st, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "Groups:" && len(f) > 1 {
			t.Errorf("the helper keeps supplementary groups: %s", l)
		}
	}
}

// TestFormerMAC: a restored guest's frames from its former address are
// dropped quietly (virtio.ErrNetDown), those from any other address but
// its own are refused loudly, and its own go through.
func TestFormerMAC(t *testing.T) {
	former := net.HardwareAddr{0x52, 0x54, 0, 0x76, 0x73, 0x6c}
	n, err := New(Config{MAC: testMAC, FormerMAC: former, Helper: helper})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.WriteFrame([][]byte{arpRequest(former)}); !errors.Is(err, virtio.ErrNetDown) {
		t.Errorf("a frame from the former address: %v, want a quiet drop", err)
	}
	other := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 10}
	if err := n.WriteFrame([][]byte{arpRequest(other)}); err == nil || errors.Is(err, virtio.ErrNetDown) {
		t.Errorf("a frame from another address: %v, want a refusal", err)
	}
	if err := n.WriteFrame([][]byte{arpRequest(testMAC)}); err != nil {
		t.Fatal(err)
	}
	n.SetDeadline(time.Now().Add(time.Minute))
	buf := make([]byte, 2048)
	k, err := n.ReadFrame(buf)
	if err != nil || k < 42 || buf[21] != 2 || !bytes.Equal(buf[0:6], testMAC) {
		t.Fatalf("no ARP reply to the guest's own address: %v % x", err, buf[:k])
	}
}

// New starts a user network and waits until its helper is ready (Start,
// then Ready), as the VMM does across its set-up.
func New(cfg Config) (*Network, error) {
	n, err := Start(cfg)
	if err != nil {
		return nil, err
	}
	if err := n.Ready(); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// TestStartFailureLeaksNothing: a Start that fails (here a jailed
// helper's executable that cannot be opened, then one that cannot be
// run) leaves no descriptor open behind it.
func TestStartFailureLeaksNothing(t *testing.T) {
	count := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	notExec := filepath.Join(t.TempDir(), "not-executable")
	os.WriteFile(notExec, []byte("data"), 0o644)
	runtime.GC() // earlier tests' unreferenced files closed now, not during the count
	before := count()
	for _, cfg := range []Config{
		{MAC: testMAC, Helper: "/nonexistent/" + HelperName, Credential: &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}},
		{MAC: testMAC, Helper: notExec},
	} {
		if n, err := Start(cfg); err == nil {
			n.Close()
			t.Fatalf("Start with helper %s succeeded", cfg.Helper)
		}
	}
	// More after is a leak; fewer is an earlier test's file that a
	// finalizer closed meanwhile.
	if after := count(); after > before {
		t.Errorf("%d descriptors open before the failed starts, %d after", before, after)
	}
}

// TestPublishAddr: a published port's host side is an IP address and a
// port, never a name the VMM would have to resolve.
func TestPublishAddr(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"127.0.0.1:8080", "127.0.0.1:8080", true},
		{":80", ":80", true},
		{"[::1]:0", "[::1]:0", true},
		{"[fe80::1%lo]:22", "[fe80::1%lo]:22", true},
		{"localhost:80", "", false},
		{"127.0.0.1:65536", "", false},
		{"127.0.0.1", "", false},
		{"127.0.0.1:-1", "", false},
	} {
		a, err := publishAddr(tc.in)
		if (err == nil) != tc.ok || (tc.ok && a.String() != tc.want) {
			t.Errorf("publishAddr(%q) = %v, %v; want %q, ok %v", tc.in, a, err, tc.want, tc.ok)
		}
	}
}
