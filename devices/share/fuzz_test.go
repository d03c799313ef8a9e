package share

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hugelgupf/p9/p9"
)

// enc9p builds 9P messages for the fuzz seeds.
type enc9p struct{ b []byte }

func (e *enc9p) u8(v byte) *enc9p    { e.b = append(e.b, v); return e }
func (e *enc9p) u16(v uint16) *enc9p { e.b = binary.LittleEndian.AppendUint16(e.b, v); return e }
func (e *enc9p) u32(v uint32) *enc9p { e.b = binary.LittleEndian.AppendUint32(e.b, v); return e }
func (e *enc9p) u64(v uint64) *enc9p { e.b = binary.LittleEndian.AppendUint64(e.b, v); return e }
func (e *enc9p) str(s string) *enc9p { return e.u16(uint16(len(s))).raw(s) }
func (e *enc9p) raw(s string) *enc9p { e.b = append(e.b, s...); return e }

// msg frames body as message typ with tag.
func msg(typ byte, tag uint16, body *enc9p) []byte {
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
	v := msg(tVersion, 0xFFFF, body().u32(65536).str("9P2000.L"))
	a := msg(tAttach, 1, body().u32(0).u32(0xFFFFFFFF).str("root").str("").u32(0))
	return append(v, a...)
}

// FuzzServer plays a hostile guest: any sequence of messages after the
// handshake. The server must answer or drop each without hanging, leave
// no descriptor behind when the connection ends, and change nothing
// outside the shared directory.
func FuzzServer(f *testing.F) {
	walk := func(tag uint16, fid, newfid uint32, names ...string) []byte {
		b := body().u32(fid).u32(newfid).u16(uint16(len(names)))
		for _, n := range names {
			b.str(n)
		}
		return msg(tWalk, tag, b)
	}
	cat := func(ms ...[]byte) []byte { return bytes.Join(ms, nil) }
	f.Add(cat(walk(2, 0, 1, ".."), walk(3, 0, 2, "up", "..", "x")))
	f.Add(cat(
		msg(tSymlink, 2, body().u32(0).str("esc").str("/").u32(0)),
		walk(3, 0, 1, "esc", "etc", "passwd"),
		walk(4, 0, 2, "esc"),
		msg(tLopen, 5, body().u32(2).u32(0)),
		msg(tReadlink, 6, body().u32(2)),
	))
	f.Add(cat(
		msg(tLcreate, 2, body().u32(0).str("f").u32(2).u32(0o4777).u32(0)),
		msg(tWrite, 3, body().u32(0).u64(0).u32(5).raw("hello")),
		msg(tRead, 4, body().u32(0).u64(0).u32(100)),
		msg(tGetattr, 5, body().u32(0).u64(0x3fff)),
		msg(tClunk, 6, body().u32(0)),
	))
	f.Add(cat(
		msg(tMkdir, 2, body().u32(0).str("d").u32(0o755).u32(0)),
		msg(tMknod, 3, body().u32(0).str("null").u32(0o20666).u32(1).u32(3).u32(0)),
		walk(4, 0, 1),
		msg(tLopen, 5, body().u32(1).u32(0)),
		msg(tReaddir, 6, body().u32(1).u64(0).u32(8192)),
		msg(tUnlinkat, 7, body().u32(0).str("d").u32(0x200)),
		msg(tUnlinkat, 8, body().u32(0).str("../outside").u32(0)),
	))
	f.Add([]byte{0xff, 0xff, 0xff, 0x7f, 110, 1, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		parent := t.TempDir()
		dir := filepath.Join(parent, "share")
		os.Mkdir(dir, 0o755)
		os.WriteFile(filepath.Join(parent, "outside"), []byte("host"), 0o644)
		os.WriteFile(filepath.Join(dir, "file"), []byte("data"), 0o644)
		s, err := New(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		guest, host := net.Pipe()
		done := make(chan struct{})
		go func() {
			p9.NewServer(s).Handle(host, host)
			close(done)
		}()
		go io.Copy(io.Discard, guest)
		guest.Write(append(handshake(), in...))
		guest.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the server did not end with the connection")
		}
		if n := s.fds.Load(); n != 0 {
			t.Errorf("%d descriptors left", n)
		}
		entries, _ := os.ReadDir(parent)
		b, _ := os.ReadFile(filepath.Join(parent, "outside"))
		if len(entries) != 2 || string(b) != "host" {
			t.Errorf("outside the share: %v, %q", entries, b)
		}
	})
}
