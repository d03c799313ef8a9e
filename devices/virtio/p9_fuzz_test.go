package virtio

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hugelgupf/p9/p9"

	"github.com/vesselvm/vessel/devices/share"
)

// enc9p builds 9P messages for the fuzz seeds.
type enc9p struct{ b []byte }

func (e *enc9p) u8(v byte) *enc9p    { e.b = append(e.b, v); return e }
func (e *enc9p) u16(v uint16) *enc9p { e.b = binary.LittleEndian.AppendUint16(e.b, v); return e }
func (e *enc9p) u32(v uint32) *enc9p { e.b = binary.LittleEndian.AppendUint32(e.b, v); return e }
func (e *enc9p) u64(v uint64) *enc9p { e.b = binary.LittleEndian.AppendUint64(e.b, v); return e }
func (e *enc9p) str(s string) *enc9p { return e.u16(uint16(len(s))).raw(s) }
func (e *enc9p) raw(s string) *enc9p { e.b = append(e.b, s...); return e }

// tmsg frames body as message typ with tag (the tests' own encoder, apart
// from the device's).
func tmsg(typ byte, tag uint16, body *enc9p) []byte {
	m := (&enc9p{}).u32(uint32(7 + len(body.b))).u8(typ).u16(tag)
	return append(m.b, body.b...)
}

func body() *enc9p { return &enc9p{} }

// 9P2000.L message types used by the seeds.
const (
	tLopen    = 12
	tLcreate  = 14
	tSymlink  = 16
	tMknod    = 18
	tReadlink = 22
	tGetattr  = 24
	tReaddir  = 40
	tMkdir    = 72
	tUnlinkat = 76
	tVersion  = 100
	tAttach   = 104
	tWalk     = 110
	tRead     = 116
	tWrite    = 118
	tClunk    = 120
)

// handshake is what every fuzz input follows: version, then attach the
// share's root as fid 0.
func handshake() []byte {
	v := tmsg(tVersion, 0xFFFF, body().u32(65536).str("9P2000.L"))
	a := tmsg(tAttach, 1, body().u32(0).u32(0xFFFFFFFF).str("root").str("").u32(0))
	return append(v, a...)
}

// FuzzP9Conn plays a hostile guest on the path the device runs: any
// sequence of messages after the handshake, framed by their size field
// as the device frames chains, submitted to a connection to p9's server
// over a share. Closing the connection (a device reset) must return, no
// descriptor may be left, and nothing outside the share may change.
func FuzzP9Conn(f *testing.F) {
	walk := func(tag uint16, fid, newfid uint32, names ...string) []byte {
		b := body().u32(fid).u32(newfid).u16(uint16(len(names)))
		for _, n := range names {
			b.str(n)
		}
		return tmsg(tWalk, tag, b)
	}
	cat := func(ms ...[]byte) []byte { return bytes.Join(ms, nil) }
	f.Add(cat(walk(2, 0, 1, ".."), walk(3, 0, 2, "up", "..", "x")))
	f.Add(cat(
		tmsg(tSymlink, 2, body().u32(0).str("esc").str("/").u32(0)),
		walk(3, 0, 1, "esc", "etc", "passwd"),
		walk(4, 0, 2, "esc"),
		tmsg(tLopen, 5, body().u32(2).u32(0)),
		tmsg(tReadlink, 6, body().u32(2)),
	))
	f.Add(cat(
		tmsg(tLcreate, 2, body().u32(0).str("f").u32(2).u32(0o4777).u32(0)),
		tmsg(tWrite, 3, body().u32(0).u64(0).u32(5).raw("hello")),
		tmsg(tRead, 4, body().u32(0).u64(0).u32(100)),
		tmsg(tGetattr, 5, body().u32(0).u64(0x3fff)),
		tmsg(tClunk, 6, body().u32(0)),
	))
	f.Add(cat(
		tmsg(tMkdir, 2, body().u32(0).str("d").u32(0o755).u32(0)),
		tmsg(tMknod, 3, body().u32(0).str("null").u32(0o20666).u32(1).u32(3).u32(0)),
		walk(4, 0, 1),
		tmsg(tLopen, 5, body().u32(1).u32(0)),
		tmsg(tReaddir, 6, body().u32(1).u64(0).u32(8192)),
		tmsg(tUnlinkat, 7, body().u32(0).str("d").u32(0x200)),
		tmsg(tUnlinkat, 8, body().u32(0).str("../outside").u32(0)),
	))
	// Flushes of themselves and of each other, which would block p9's
	// server forever.
	f.Add(cat(tmsg(p9Tflush, 9, body().u16(9)), tmsg(p9Tflush, 10, body().u16(11)), tmsg(p9Tflush, 11, body().u16(10))))
	f.Add([]byte{0xff, 0xff, 0xff, 0x7f, 110, 1, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		parent := t.TempDir()
		dir := filepath.Join(parent, "share")
		os.Mkdir(dir, 0o755)
		os.WriteFile(filepath.Join(parent, "outside"), []byte("host"), 0o644)
		os.WriteFile(filepath.Join(dir, "file"), []byte("data"), 0o644)
		sh, err := share.New(dir, false, share.NewFDBudget(1024))
		if err != nil {
			t.Fatal(err)
		}
		defer sh.Close()
		c := newP9Conn(p9.NewServer(sh), nil)
		stop := make(chan struct{})
		data := append(handshake(), in...)
		for len(data) >= p9HeaderSize {
			size := int(binary.LittleEndian.Uint32(data))
			if size < p9HeaderSize || size > len(data) {
				break
			}
			if c.submit(data[:size:size], func([]byte) {}, stop) == submitStopped {
				break
			}
			data = data[size:]
		}
		closed := make(chan struct{})
		go func() {
			c.close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatal("the connection did not close: the server hangs")
		}
		if n := sh.OpenFiles(); n != 1 {
			t.Errorf("%d descriptors held, want only the share's root", n)
		}
		entries, _ := os.ReadDir(parent)
		b, _ := os.ReadFile(filepath.Join(parent, "outside"))
		if len(entries) != 2 || string(b) != "host" {
			t.Errorf("outside the share: %v, %q", entries, b)
		}
	})
}
