package rootfs

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
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
	if err := Build(img, dst, func(n int64) { done = n }); err != nil {
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

func TestBuildRejectsTraversal(t *testing.T) {
	for _, e := range []entry{
		{name: "../escape", body: "x"},
		{name: "a/../../escape", body: "x"},
		{name: "evil", typ: tar.TypeLink, link: "../../etc/passwd"},
		{name: "a/evil", typ: tar.TypeSymlink, link: "../../etc/passwd"},
	} {
		dir := t.TempDir()
		err := Build(image(t, layer(t, e)), filepath.Join(dir, "root.ext4"), nil)
		if !errors.Is(err, ErrUnsafeEntry) {
			t.Errorf("entry %q -> %q: %v, want ErrUnsafeEntry", e.name, e.link, err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("entry %q: %d files left in the output directory", e.name, len(ents))
		}
	}
}

func TestCached(t *testing.T) {
	img := image(t, layer(t, entry{name: "f", body: "1"}))
	id, _ := img.Digest()
	dir := filepath.Join(t.TempDir(), "cache")
	p, err := Cached(dir, id, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	st1, _ := os.Stat(p)
	called := false
	p2, err := Cached(dir, id, img, func(int64) { called = true })
	st2, _ := os.Stat(p2)
	if err != nil || p2 != p || !os.SameFile(st1, st2) || st1.ModTime() != st2.ModTime() {
		t.Errorf("second Cached rebuilt or moved the image: %s %v", p2, err)
	}
	if called {
		t.Error("a cached image reported build progress")
	}
	if _, err := Cached(dir, v1.Hash{Algorithm: "sha256", Hex: "../x"}, img, nil); err == nil {
		t.Error("Cached took a malformed ID")
	}
}
