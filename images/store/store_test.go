package store

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/vesselvm/vessel/images/rootfs"
	"github.com/vesselvm/vessel/internal/bbimage"
)

func newStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func randomImage(t testing.TB) v1.Image {
	t.Helper()
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// dockerArchive writes img as `docker save` would, tagged with tags.
func dockerArchive(t testing.TB, img v1.Image, tags ...string) string {
	t.Helper()
	refs := map[name.Reference]v1.Image{}
	for _, tg := range tags {
		tag, err := name.NewTag(tg)
		if err != nil {
			t.Fatal(err)
		}
		refs[tag] = img
	}
	path := filepath.Join(t.TempDir(), "docker.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := tarball.MultiRefWrite(refs, f); err != nil {
		t.Fatal(err)
	}
	return path
}

// ociLayout writes img into an OCI layout directory under ref.
func ociLayout(t testing.TB, img v1.Image, ref string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{refAnnotation: ref})); err != nil {
		t.Fatal(err)
	}
	return dir
}

// tarDir packs dir into a tar file, with extra entries appended.
func tarDir(t testing.TB, dir string, extra ...tar.Header) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "oci.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(dir, p)
		if rel == "." || err != nil {
			return err
		}
		if d.IsDir() {
			return tw.WriteHeader(&tar.Header{Name: rel + "/", Typeflag: tar.TypeDir, Mode: 0o755})
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: rel, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))}); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	})
	for _, h := range extra {
		h := h
		body := "x"
		h.Size = int64(len(body))
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte(body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadFormats(t *testing.T) {
	img := randomImage(t)
	id, _ := img.Digest()
	for _, tc := range []struct {
		name, src, want string
	}{
		{"docker save", dockerArchive(t, img, "busybox:1.36", "example.com/team/app:v1"), "index.docker.io/library/busybox:1.36"},
		{"oci layout", ociLayout(t, img, "example.com/app:v2"), "example.com/app:v2"},
		{"oci archive", tarDir(t, ociLayout(t, img, "example.com/app:v3")), "example.com/app:v3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			got, err := s.Load(tc.src)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) == 0 || got[0].ID != id {
				t.Fatalf("loaded %+v, want image %s", got, id)
			}
			i, err := s.Resolve(tc.want)
			if err != nil || i.ID != id {
				t.Fatalf("Resolve(%q) = %+v, %v", tc.want, i, err)
			}
			stored, err := s.Image(i)
			if err != nil {
				t.Fatal(err)
			}
			if d, _ := stored.Digest(); d != id {
				t.Errorf("stored image digest %s, want %s", d, id)
			}
			layers, _ := stored.Layers()
			if len(layers) != 2 {
				t.Errorf("%d layers, want 2", len(layers))
			}
		})
	}
}

func TestResolveNames(t *testing.T) {
	s := newStore(t)
	img := randomImage(t)
	if _, err := s.Load(dockerArchive(t, img, "busybox:latest")); err != nil {
		t.Fatal(err)
	}
	id, _ := img.Digest()
	for _, ref := range []string{"busybox", "busybox:latest", "docker.io/library/busybox", "index.docker.io/library/busybox:latest", id.String(), id.Hex[:12], id.Hex[:4]} {
		if i, err := s.Resolve(ref); err != nil || i.ID != id {
			t.Errorf("Resolve(%q) = %+v, %v", ref, i, err)
		}
	}
	for _, ref := range []string{"alpine", "busybox:1", "abc", "ffffffffffff"} {
		if _, err := s.Resolve(ref); !errors.Is(err, ErrNotFound) {
			t.Errorf("Resolve(%q) = %v, want ErrNotFound", ref, err)
		}
	}
}

func TestRemoveCollectsBlobs(t *testing.T) {
	s := newStore(t)
	a, b := randomImage(t), randomImage(t)
	if _, err := s.Load(dockerArchive(t, a, "a:1", "a:2")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(dockerArchive(t, b, "b:1")); err != nil {
		t.Fatal(err)
	}
	blobs := func() int {
		e, _ := os.ReadDir(filepath.Join(s.root, "blobs", "sha256"))
		return len(e)
	}
	full := blobs() // 2 images x (manifest, config, 2 layers)
	if full != 8 {
		t.Fatalf("%d blobs, want 8", full)
	}
	if _, err := s.Remove("a:1"); err != nil {
		t.Fatal(err)
	}
	if n := blobs(); n != full {
		t.Errorf("removing one of two names deleted blobs (%d left of %d)", n, full)
	}
	ia, _ := s.Resolve("a:2")
	disk, err := s.Rootfs(ia)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := s.Rootfs(ia); err != nil || again != disk {
		t.Fatalf("second Rootfs: %s, %v", again, err)
	}
	if _, err := s.Remove("a:2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(disk); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the removed image's disk %s is still there (%v)", disk, err)
	}
	if n := blobs(); n != 4 {
		t.Errorf("%d blobs after removing image a, want 4", n)
	}
	imgs, _ := s.List()
	if len(imgs) != 1 || imgs[0].Ref != "index.docker.io/library/b:1" {
		t.Errorf("List = %+v", imgs)
	}
	if _, err := s.Remove("a:1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("removing a removed image: %v", err)
	}
}

func TestLoadRejects(t *testing.T) {
	img := randomImage(t)
	good := dockerArchive(t, img, "x:1")
	raw, _ := os.ReadFile(good)
	dir := t.TempDir()
	truncated := filepath.Join(dir, "truncated.tar")
	os.WriteFile(truncated, raw[:len(raw)/2], 0o644)
	garbage := filepath.Join(dir, "garbage.tar")
	os.WriteFile(garbage, []byte(strings.Repeat("not a tar file ", 100)), 0o644)
	layoutDir := ociLayout(t, img, "example.com/x:1")
	// An OCI archive is unpacked in a directory under $TMPDIR: an entry
	// that climbed out of it would land in tmp (or above, in base).
	base := t.TempDir()
	tmp := filepath.Join(base, "tmp")
	for _, tc := range []struct{ name, src string }{
		{"truncated docker archive", truncated},
		{"not a tar", garbage},
		{"dot-dot entry", tarDir(t, layoutDir, tar.Header{Name: "blobs/../../escape", Typeflag: tar.TypeReg})},
		{"dot-dot entry, two levels", tarDir(t, layoutDir, tar.Header{Name: "blobs/sha256/../../../escape", Typeflag: tar.TypeReg})},
		{"absolute entry", tarDir(t, layoutDir, tar.Header{Name: filepath.Join(base, "escape"), Typeflag: tar.TypeReg})},
		{"symlink", tarDir(t, layoutDir, tar.Header{Name: "blobs/sha256/link", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"})},
		{"stray file", tarDir(t, layoutDir, tar.Header{Name: "evil.sh", Typeflag: tar.TypeReg})},
		{"empty dir", t.TempDir()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			if err := os.MkdirAll(tmp, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Setenv("TMPDIR", tmp)
			if got, err := s.Load(tc.src); err == nil {
				t.Fatalf("loaded %+v", got)
			}
			if imgs, _ := s.List(); len(imgs) != 0 {
				t.Errorf("store holds %+v after a failed load", imgs)
			}
			if left, _ := os.ReadDir(tmp); len(left) != 0 {
				t.Errorf("%s holds %s after a failed load", tmp, left[0].Name())
			}
			if left, _ := os.ReadDir(base); len(left) != 1 {
				t.Errorf("an entry was written outside the store: %s holds %d entries", base, len(left))
			}
		})
	}
}

// imageOf is an image of one layer holding entries.
func imageOf(t *testing.T, entries ...tar.Header) v1.Image {
	t.Helper()
	img, err := bbimage.OneLayer(entries...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestLoadRefusesLayers: an image whose disk vessel would refuse to
// build is refused when it is loaded, and nothing of it stays.
func TestLoadRefusesLayers(t *testing.T) {
	for _, tc := range []struct {
		name string
		img  v1.Image
		want error
	}{
		{"dot-dot", imageOf(t, tar.Header{Name: "../x", Typeflag: tar.TypeReg, Size: 1}), rootfs.ErrUnsafeEntry},
		{"absolute hard link out of the image", imageOf(t, tar.Header{Name: "shadow", Typeflag: tar.TypeLink, Linkname: "/etc/shadow"}), rootfs.ErrUnsafeEntry},
		{"entry below a symlink", imageOf(t,
			tar.Header{Name: "a", Typeflag: tar.TypeSymlink, Linkname: "b"},
			tar.Header{Name: "b", Typeflag: tar.TypeSymlink, Linkname: "/"},
			tar.Header{Name: "a/etc/passwd", Typeflag: tar.TypeReg, Size: 1}), rootfs.ErrUnsafeEntry},
		{"over the size limit", imageOf(t, tar.Header{Name: "big", Typeflag: tar.TypeReg, Size: 2 << 20}), rootfs.ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			s.SetLimits(rootfs.LimitsFor(1 << 20))
			if got, err := s.Load(dockerArchive(t, tc.img, "bad:1")); !errors.Is(err, tc.want) {
				t.Fatalf("loaded %+v, %v; want %v", got, err, tc.want)
			}
			if imgs, _ := s.List(); len(imgs) != 0 {
				t.Errorf("store holds %+v", imgs)
			}
			if blobs, _ := os.ReadDir(filepath.Join(s.root, "blobs", "sha256")); len(blobs) != 0 {
				t.Errorf("%d blobs left", len(blobs))
			}
		})
	}
}

// TestIndexReplaced: index.json is replaced whole, never rewritten in
// place: a reader that opened it before a load still reads the index as
// it was.
func TestIndexReplaced(t *testing.T) {
	s := newStore(t)
	f, err := os.Open(filepath.Join(s.root, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before, _ := io.ReadAll(f)
	if _, err := s.Load(dockerArchive(t, randomImage(t), "x:1")); err != nil {
		t.Fatal(err)
	}
	after, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<20))
	if err != nil || !bytes.Equal(after, before) {
		t.Errorf("index.json was rewritten in place: %q, was %q (%v)", after, before, err)
	}
	if imgs, err := s.List(); err != nil || len(imgs) != 1 {
		t.Errorf("List = %+v, %v", imgs, err)
	}
}

// TestConcurrentLoads: loads of different images by stores opened
// separately (as separate vessel processes do) all end up in index.json.
func TestConcurrentLoads(t *testing.T) {
	root := filepath.Join(t.TempDir(), "store")
	const n = 6
	archives := make([]string, n)
	for i := range archives {
		archives[i] = dockerArchive(t, randomImage(t), fmt.Sprintf("img%d:1", i))
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range archives {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(root)
			if err == nil {
				_, err = s.Load(archives[i])
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("load %d: %v", i, err)
		}
	}
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := s.List()
	if err != nil || len(imgs) != n {
		t.Fatalf("%d images in the store, want %d (%v)", len(imgs), n, err)
	}
}

// A blob whose content does not match its digest never enters the store.
func TestCorruptBlob(t *testing.T) {
	img := randomImage(t)
	dir := ociLayout(t, img, "example.com/x:1")
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	blob := filepath.Join(dir, "blobs", "sha256", d.Hex)
	b, _ := os.ReadFile(blob)
	b[len(b)/2] ^= 0xff
	os.WriteFile(blob, b, 0o644)
	s := newStore(t)
	if _, err := s.Load(dir); !errors.Is(err, ErrBadArchive) {
		t.Fatalf("loading a corrupt layer: %v, want ErrBadArchive", err)
	}
	if _, err := os.Stat(filepath.Join(s.root, "blobs", "sha256", d.Hex)); err == nil {
		t.Error("the corrupt blob was stored")
	}
}

// TestOpenSweeps: what a killed load or disk build left (temporary files
// of blobs, disks and index.json, and the blobs of an image not yet in
// index.json) is removed when the store is next opened; the stored
// images and their disks stay.
func TestOpenSweeps(t *testing.T) {
	s := newStore(t)
	if _, err := s.Load(dockerArchive(t, randomImage(t), "kept:1")); err != nil {
		t.Fatal(err)
	}
	img, err := s.Resolve("kept:1")
	if err != nil {
		t.Fatal(err)
	}
	disk, err := s.Rootfs(img)
	if err != nil {
		t.Fatal(err)
	}
	files := func() []string {
		var l []string
		filepath.WalkDir(s.root, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && d.Name() != ".lock" {
				l = append(l, strings.TrimPrefix(p, s.root+"/"))
			}
			return nil
		})
		return l
	}
	want := files()
	leftovers := []string{
		"blobs/sha256/.incoming-1234",
		"blobs/sha256/" + strings.Repeat("ab", 32), // a blob of an image the killed load never named
		"rootfs/.rootfs-5678",
		".index.json-9",
		".oci-layout-10",
	}
	for _, l := range leftovers {
		if err := os.WriteFile(filepath.Join(s.root, l), []byte("half"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s2, err := Open(s.root)
	if err != nil {
		t.Fatal(err)
	}
	if got := files(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("files after Open: %v, want %v", got, want)
	}
	if again, err := s2.Rootfs(img); err != nil || again != disk {
		t.Errorf("the image's disk after Open: %s, %v", again, err)
	}
	if imgs, err := s2.List(); err != nil || len(imgs) != 1 {
		t.Errorf("List after Open: %v, %v", imgs, err)
	}
}
