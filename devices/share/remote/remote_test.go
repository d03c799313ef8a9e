package remote

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vesselvm/vessel/internal/fdpass"
	"github.com/vesselvm/vessel/internal/helperproc"
	"github.com/vesselvm/vessel/internal/testbin"
)

// helperPath is vessel-share, built for the tests.
var helperPath string

func TestMain(m *testing.M) {
	testbin.Main(func(path string) int {
		helperPath = path
		return m.Run()
	}, "github.com/vesselvm/vessel/cmd/vessel-share", HelperName)
}

// 9P2000.L message types the tests send and expect.
const (
	tVersion, rVersion = 100, 101
	tAttach, rAttach   = 104, 105
	tWalk, rWalk       = 110, 111
	rLerror            = 7
)

// msg builds a 9P message: size[4] type[1] tag[2] body.
func msg(typ byte, tag uint16, body ...any) []byte {
	b := []byte{0, 0, 0, 0, typ, byte(tag), byte(tag >> 8)}
	for _, v := range body {
		switch v := v.(type) {
		case uint16:
			b = binary.LittleEndian.AppendUint16(b, v)
		case uint32:
			b = binary.LittleEndian.AppendUint32(b, v)
		case string:
			b = binary.LittleEndian.AppendUint16(b, uint16(len(v)))
			b = append(b, v...)
		}
	}
	binary.LittleEndian.PutUint32(b, uint32(len(b)))
	return b
}

// replies collects what a server writes, as virtio.P9's writer does.
type replies struct {
	mu  sync.Mutex
	buf []byte
}

func (r *replies) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf = append(r.buf, b...)
	return len(b), nil
}

func (r *replies) Close() error { return nil }

// next waits for the next whole reply and returns its type and tag.
func (r *replies) next(t *testing.T) (typ byte, tag uint16) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		r.mu.Lock()
		if len(r.buf) >= 7 {
			size := binary.LittleEndian.Uint32(r.buf)
			if uint32(len(r.buf)) >= size {
				typ, tag = r.buf[4], binary.LittleEndian.Uint16(r.buf[5:])
				r.buf = r.buf[size:]
				r.mu.Unlock()
				return typ, tag
			}
		}
		r.mu.Unlock()
	}
	t.Fatal("no reply within a minute")
	return 0, 0
}

// TestServe: the helper serves the share it was started with, one 9P
// connection per Handle, and a connection ends when its requests do.
func TestServe(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello"), []byte("hi"), 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := Start(Config{Shares: []Share{{Dir: dir, ReadOnly: true}}, Helper: helperPath})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for conn := 0; conn < 2; conn++ {
		reqR, reqW := io.Pipe()
		var out replies
		done := make(chan error, 1)
		go func() { done <- h.Server(0).Handle(reqR, &out) }()
		const noFid = ^uint32(0)
		for _, step := range []struct {
			req  []byte
			want byte
		}{
			{msg(tVersion, 0xffff, uint32(8192), "9P2000.L"), rVersion},
			{msg(tAttach, 1, uint32(1), noFid, "", "", uint32(0)), rAttach},
			{msg(tWalk, 2, uint32(1), uint32(2), uint16(1), "hello"), rWalk},
			{msg(tWalk, 3, uint32(1), uint32(3), uint16(1), "missing"), rLerror},
		} {
			if _, err := reqW.Write(step.req); err != nil {
				t.Fatal(err)
			}
			if typ, tag := out.next(t); typ != step.want || tag != binary.LittleEndian.Uint16(step.req[5:]) {
				t.Fatalf("connection %d: reply type %d tag %d to request type %d, want type %d", conn, typ, tag, step.req[4], step.want)
			}
		}
		reqW.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("connection %d: Handle: %v", conn, err)
			}
		case <-time.After(time.Minute):
			t.Fatalf("connection %d: Handle did not return after its requests ended", conn)
		}
	}
}

// TestStartMissingDir: a share whose directory is missing is an error of
// Start, naming it, and starts no helper.
func TestStartMissingDir(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	_, err := Start(Config{Shares: []Share{{Dir: missing}}, Helper: helperPath})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte(missing)) {
		t.Fatalf("Start with a missing directory: %v, want an error naming it", err)
	}
}

// readyHelper is a Helper that said it is ready, whose control
// socket's other end, theirs, is the test's.
func readyHelper(t *testing.T) (h *Helper, theirs *os.File) {
	t.Helper()
	ctl, theirs, err := helperproc.Pair("ctl")
	if err != nil {
		t.Fatal(err)
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	readyW.WriteString("ok\n")
	readyW.Close()
	h = &Helper{ctl: ctl, readyR: readyR, cmd: &exec.Cmd{Args: []string{HelperName}}}
	t.Cleanup(func() { h.ctl.Close(); theirs.Close() })
	return h, theirs
}

// fakeHelper is a ready Helper whose other end is the test's: conns
// receives the connections a Server hands it.
func fakeHelper(t *testing.T) (*Helper, <-chan *os.File) {
	t.Helper()
	h, theirs := readyHelper(t)
	fc, err := net.FileConn(theirs)
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan *os.File, 4)
	go func() {
		defer fc.Close()
		for {
			_, files, err := fdpass.Recv(fc.(*net.UnixConn), 4, 1)
			if err != nil || len(files) == 0 {
				return
			}
			conns <- files[0]
		}
	}()
	return h, conns
}

// TestStalledHelper: a helper that stops reading its connection, or
// never answers after its requests ended, holds a connection's end (a
// device reset) for stallWait, not for good.
func TestStalledHelper(t *testing.T) {
	defer func(w time.Duration) { stallWait = w }(stallWait)
	stallWait = 300 * time.Millisecond
	for _, tc := range []struct {
		name     string
		requests int // bytes of requests the guest sends
	}{
		{"never reads", 8 << 20},
		{"never answers", 64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, conns := fakeHelper(t)
			done := make(chan error, 1)
			go func() {
				done <- h.Server(0).Handle(io.NopCloser(io.LimitReader(zeros{}, int64(tc.requests))), &replies{})
			}()
			var conn *os.File
			select {
			case conn = <-conns:
			case <-time.After(10 * time.Second):
				t.Fatal("no connection reached the helper")
			}
			defer conn.Close()
			if tc.requests < 4096 {
				go io.Copy(io.Discard, conn) // reads, never writes or closes
			}
			select {
			case err := <-done:
				if err == nil {
					t.Errorf("Handle returned no error for a stalled helper")
				}
			case <-time.After(20 * time.Second):
				t.Fatal("Handle still waits for a stalled helper after 20 s")
			}
		})
	}
}

// zeros reads as zero bytes.
type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

// TestControlNotRead: a helper (taken over by the guest) that stops
// reading its control socket must not hold a connection's start for
// good. connect writes to ctl with no deadline while holding h.mu: once
// the socket's send buffer is full of connections the helper never took
// (one per device activation, which the guest makes by resetting the
// device), Handle blocks in connect forever, and with it that device's
// reset (p9Conn.close waits for Handle) and every other share's connect.
func TestControlNotRead(t *testing.T) {
	defer func(w time.Duration) { stallWait = w }(stallWait)
	stallWait = 300 * time.Millisecond
	h, _ := readyHelper(t) // the helper's end: open, never read
	s := h.Server(0)
	for i := 0; i < 100000; i++ {
		done := make(chan error, 1)
		go func() {
			conn, err := s.connect()
			if err == nil {
				conn.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				return // refused within the bound: what the test wants
			}
		case <-time.After(20 * stallWait):
			t.Fatalf("connection %d: connect still blocked after %v on a helper that stopped reading its control socket", i, 20*stallWait)
		}
	}
}
