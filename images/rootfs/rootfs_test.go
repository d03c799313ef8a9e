package rootfs

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

// entry is one file of a test layer.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
	uid              int
}

func layer(t *testing.T, entries ...entry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Linkname: e.link, Size: int64(len(e.body))}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func image(t *testing.T, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// debugfs runs e2fsprogs' debugfs request on the ext4 image.
func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", req, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs %q (from e2fsprogs, which make deps installs): %v\n%s", req, err, out)
	}
	return string(out)
}

func TestBuildLayersAndWhiteouts(t *testing.T) {
	img := image(t,
		layer(t,
			entry{name: "bin/", typ: tar.TypeDir, mode: 0o755},
			entry{name: "bin/sh", body: "#!shell", mode: 0o755},
			entry{name: "etc/", typ: tar.TypeDir, mode: 0o755},
			entry{name: "etc/hostname", body: "old"},
			entry{name: "etc/motd", body: "hello"},
			entry{name: "home/user/", typ: tar.TypeDir, mode: 0o700, uid: 1000},
			entry{name: "bin/busybox", typ: tar.TypeLink, link: "bin/sh"},
			entry{name: "lib", typ: tar.TypeSymlink, link: "/usr/lib"},
			entry{name: "usr/lib64", typ: tar.TypeSymlink, link: "../lib"},
		),
		layer(t,
			entry{name: "etc/.wh.hostname", body: ""},
			entry{name: "etc/motd", body: "replaced"},
			entry{name: "/abs/file", body: "absolute names are relative to the root"},
		),
	)
	dst := filepath.Join(t.TempDir(), "root.ext4")
	var done int64
	if err := Build(img, dst, Limits{}, func(n int64) { done = n }); err != nil {
		t.Fatal(err)
	}
	if done < 1024 { // the tar stream of a few files: headers alone are 512 bytes each
		t.Errorf("progress reported %d bytes converted", done)
	}
	if got := debugfs(t, dst, "cat /etc/motd"); !strings.Contains(got, "replaced") {
		t.Errorf("/etc/motd: %q, want the upper layer's", got)
	}
	if got := debugfs(t, dst, "ls /etc"); strings.Contains(got, "hostname") {
		t.Errorf("the whiteout did not remove /etc/hostname: %s", got)
	}
	if got := debugfs(t, dst, "cat /bin/busybox"); !strings.Contains(got, "#!shell") {
		t.Errorf("hard link: %q", got)
	}
	if got := debugfs(t, dst, "stat /home/user"); !strings.Contains(got, "User:  1000") || !strings.Contains(got, "0700") {
		t.Errorf("owner and mode not kept:\n%s", got)
	}
	if got := debugfs(t, dst, "stat /lib"); !strings.Contains(got, "/usr/lib") {
		t.Errorf("symlink not kept:\n%s", got)
	}
	if got := debugfs(t, dst, "cat /abs/file"); !strings.Contains(got, "relative to the root") {
		t.Errorf("/abs/file: %q", got)
	}
}

// TestBuildRejectsUnsafe: entries that climb out of the root, or that
// the disk could not hold as the layers say, fail the build with
// ErrUnsafeEntry and leave nothing behind.
func TestBuildRejectsUnsafe(t *testing.T) {
	for _, tc := range []struct {
		name   string
		layers [][]entry
	}{
		{"dot-dot", [][]entry{{{name: "../escape", body: "x"}}}},
		{"dot-dot inside", [][]entry{{{name: "a/../../escape", body: "x"}}}},
		{"hard link climbing", [][]entry{{{name: "evil", typ: tar.TypeLink, link: "../../etc/passwd"}}}},
		{"symlink climbing", [][]entry{{{name: "a/evil", typ: tar.TypeSymlink, link: "../../etc/passwd"}}}},
		{"absolute hard link to a file not in the image", [][]entry{{{name: "shadow", typ: tar.TypeLink, link: "/etc/shadow"}}}},
		{"hard link to a directory", [][]entry{{{name: "d/", typ: tar.TypeDir, mode: 0o755}, {name: "l", typ: tar.TypeLink, link: "d"}}}},
		{"hard link through a symlink", [][]entry{{{name: "s", typ: tar.TypeSymlink, link: "/etc"}, {name: "l", typ: tar.TypeLink, link: "s/passwd"}}}},
		{"entry below a symlink", [][]entry{{{name: "etc", typ: tar.TypeSymlink, link: "/"}, {name: "etc/passwd", body: "x"}}}},
		{"entry below a symlink of a lower layer", [][]entry{
			{{name: "a", typ: tar.TypeSymlink, link: "b"}, {name: "b", typ: tar.TypeSymlink, link: "/"}},
			{{name: "a/x", body: "x"}},
		}},
		{"entry below a file", [][]entry{{{name: "f", body: "x"}}, {{name: "f/x", body: "x"}}}},
		{"name too long", [][]entry{{{name: strings.Repeat("n", 256), body: "x"}}}},
		{"unknown type", [][]entry{{{name: "c", typ: tar.TypeCont}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ls []v1.Layer
			for _, es := range tc.layers {
				ls = append(ls, layer(t, es...))
			}
			dir := t.TempDir()
			err := Build(image(t, ls...), filepath.Join(dir, "root.ext4"), Limits{}, nil)
			if !errors.Is(err, ErrUnsafeEntry) {
				t.Errorf("%v, want ErrUnsafeEntry", err)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Errorf("%d files left in the output directory", len(ents))
			}
		})
	}
}

// TestBuildAcceptsReplacedSymlink: an upper layer may replace a symlink
// with a directory (a whiteout, or a directory entry) and fill it.
func TestBuildAcceptsReplacedSymlink(t *testing.T) {
	img := image(t,
		layer(t, entry{name: "a", typ: tar.TypeSymlink, link: "/etc"}, entry{name: "b", typ: tar.TypeSymlink, link: "/etc"}),
		layer(t, entry{name: ".wh.a"}, entry{name: "a/x", body: "in a"}, entry{name: "b/", typ: tar.TypeDir, mode: 0o755}, entry{name: "b/y", body: "in b"}),
	)
	dst := filepath.Join(t.TempDir(), "root.ext4")
	if err := Build(img, dst, Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	if got := debugfs(t, dst, "cat /b/y"); !strings.Contains(got, "in b") {
		t.Errorf("/b/y: %q", got)
	}
}

// paxRecord formats one PAX extended header record.
func paxRecord(k, v string) string {
	r := " " + k + "=" + v + "\n"
	n := len(r) + 1
	for len(strconv.Itoa(n))+len(r) != n {
		n++
	}
	return strconv.Itoa(n) + r
}

// tarHeader formats a ustar header block.
func tarHeader(name string, typ byte, size int64) []byte {
	b := make([]byte, 512)
	copy(b, name)
	copy(b[100:], "0000644\x00")
	copy(b[108:], "0000000\x00")
	copy(b[116:], "0000000\x00")
	copy(b[124:], fmt.Sprintf("%011o\x00", size))
	copy(b[136:], "00000000000\x00")
	b[156] = typ
	copy(b[257:], "ustar\x0000")
	copy(b[148:], "        ")
	sum := 0
	for _, c := range b {
		sum += int(c)
	}
	copy(b[148:], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

func pad(b []byte) []byte { return append(b, make([]byte, (512-len(b)%512)%512)...) }

// sparseLayer is a layer holding one GNU sparse file (PAX format 0.1) of
// size bytes, all a hole but for data at offset off: a few KiB of tar.
func sparseLayer(t *testing.T, name string, size, off int64, data string) v1.Layer {
	t.Helper()
	pax := paxRecord("GNU.sparse.major", "0") + paxRecord("GNU.sparse.minor", "1") +
		paxRecord("GNU.sparse.name", name) + paxRecord("GNU.sparse.size", strconv.FormatInt(size, 10)) +
		paxRecord("GNU.sparse.numblocks", "1") + paxRecord("GNU.sparse.map", fmt.Sprintf("%d,%d", off, len(data)))
	var b []byte
	b = append(b, tarHeader("PaxHeaders/"+name, tar.TypeXHeader, int64(len(pax)))...)
	b = append(b, pad([]byte(pax))...)
	b = append(b, tarHeader("GNUSparseFile.0/"+name, tar.TypeReg, int64(len(data)))...)
	b = append(b, pad([]byte(data))...)
	b = append(b, make([]byte, 1024)...)
	// The test's own reading of it, so that a broken layer fails here.
	tr := tar.NewReader(bytes.NewReader(b))
	if h, err := tr.Next(); err != nil || h.Name != name || h.Size != size {
		t.Fatalf("sparse layer: %+v, %v", h, err)
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// allocated is the bytes of disk a file takes.
func allocated(t *testing.T, p string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestBuildSparse: a small image holding a large sparse file makes a
// disk whose holes stay holes on the host, whose files read back as they
// were, and that e2fsck finds sound.
func TestBuildSparse(t *testing.T) {
	const size = 256 << 20
	img := image(t,
		layer(t, entry{name: "etc/motd", body: "hello"}),
		sparseLayer(t, "big", size, 100<<20, "data in the middle"),
		sparseLayer(t, "small", 1<<20, 512<<10, "data at 512K"),
	)
	dst := filepath.Join(t.TempDir(), "root.ext4")
	if err := Build(img, dst, Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	if a := allocated(t, dst); a > 4<<20 {
		t.Errorf("the disk takes %d bytes of the host's disk, want the holes left out", a)
	}
	if got := debugfs(t, dst, "stat /big"); !strings.Contains(got, "Size: "+strconv.Itoa(size)) {
		t.Errorf("/big:\n%s", got)
	}
	if got := debugfs(t, dst, "cat /etc/motd"); !strings.Contains(got, "hello") {
		t.Errorf("/etc/motd: %q", got)
	}
	dump := filepath.Join(t.TempDir(), "small")
	debugfs(t, dst, "dump /small "+dump)
	want := make([]byte, 1<<20)
	copy(want[512<<10:], "data at 512K")
	if got, err := os.ReadFile(dump); err != nil || !bytes.Equal(got, want) {
		t.Errorf("/small does not read back as written (%d bytes, %v)", len(got), err)
	}
	// tar2ext4 leaves the inode bitmap's padding clear, which e2fsck
	// reports of every disk it writes; anything else is an error.
	out, err := exec.Command("e2fsck", "-fn", dst).CombinedOutput()
	if err != nil {
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "? no") && !strings.HasPrefix(l, "Padding at end of inode bitmap is not set") {
				t.Errorf("e2fsck: %v\n%s", err, out)
				break
			}
		}
	}
}

// TestBuildLimits: layers holding more than the limits allow (sparse
// files count their full size) fail with ErrTooLarge before anything is
// written.
func TestBuildLimits(t *testing.T) {
	many := make([]entry, 5)
	for i := range many {
		many[i] = entry{name: fmt.Sprintf("f%d", i), body: "x"}
	}
	for _, tc := range []struct {
		name  string
		lim   Limits
		layer func(t *testing.T) v1.Layer
	}{
		{"2G sparse file over a 1G limit", LimitsFor(1 << 30), func(t *testing.T) v1.Layer { return sparseLayer(t, "big", 2<<30, 1<<30, "x") }},
		{"9G sparse file over the default limit", Limits{}, func(t *testing.T) v1.Layer { return sparseLayer(t, "big", 9<<30, 0, "x") }},
		{"entries", Limits{Size: 1 << 30, Entries: 4}, func(t *testing.T) v1.Layer { return layer(t, many...) }},
		{"data past the end of the archive", Limits{Size: 1 << 20, Entries: 16}, func(t *testing.T) v1.Layer { return trailing(t, 4<<20) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			err := Build(image(t, tc.layer(t)), filepath.Join(dir, "root.ext4"), tc.lim, nil)
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("%v, want ErrTooLarge", err)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Errorf("%d files left in the output directory", len(ents))
			}
		})
	}
}

// trailing is a layer of one small file whose tar stream goes on with n
// bytes of zeros after the end of the archive, as a compressed layer can
// expand to for a few bytes.
func trailing(t *testing.T, n int) v1.Layer {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1})
	tw.Write([]byte("x"))
	tw.Close()
	b.Write(make([]byte, n))
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestBuildNoSpace: a disk that may not fit in its directory's free
// space is not started.
func TestBuildNoSpace(t *testing.T) {
	dir := t.TempDir()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	size := int64(fs.Bavail)*fs.Bsize + 1<<30
	err := Build(image(t, sparseLayer(t, "big", size, 0, "x")), filepath.Join(dir, "root.ext4"), LimitsFor(2*size), nil)
	if !errors.Is(err, ErrNoSpace) || !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("%v, want ErrNoSpace", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("%d files left in the output directory", len(ents))
	}
}

func TestCached(t *testing.T) {
	img := image(t, layer(t, entry{name: "f", body: "1"}))
	id, _ := img.Digest()
	dir := filepath.Join(t.TempDir(), "cache")
	p, err := Cached(dir, id, img, Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st1, _ := os.Stat(p)
	called := false
	p2, err := Cached(dir, id, img, Limits{}, func(int64) { called = true })
	st2, _ := os.Stat(p2)
	if err != nil || p2 != p || !os.SameFile(st1, st2) || st1.ModTime() != st2.ModTime() {
		t.Errorf("second Cached rebuilt or moved the image: %s %v", p2, err)
	}
	if called {
		t.Error("a cached image reported build progress")
	}
	if _, err := Cached(dir, v1.Hash{Algorithm: "sha256", Hex: "../x"}, img, Limits{}, nil); err == nil {
		t.Error("Cached took a malformed ID")
	}
}
