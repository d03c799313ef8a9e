package store

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/internal/shmdir"
)

// FuzzLoad feeds Load an archive of any bytes (a `docker save` tarball
// or an OCI archive, plain or gzip-compressed, in the seeds): no panic;
// an archive that fails leaves the store as it was; one that loads
// gives images the store lists; nothing is written outside the store.
func FuzzLoad(f *testing.F) {
	img := randomImage(f)
	for _, p := range []string{
		dockerArchive(f, img, "fuzz:1"),
		tarDir(f, ociLayout(f, img, "fuzz:2")),
	} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// One store for all inputs (opening one costs fsyncs): each input
	// starts from it empty, and what loads is removed again. It lives in
	// a tmpfs where there is one: on a disk, the store's fsyncs take
	// nine tenths of the time.
	dir := shmdir.Dir(f)
	s, err := Open(filepath.Join(dir, "store"))
	if err != nil {
		f.Fatal(err)
	}
	src := filepath.Join(dir, "archive")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(src, data, 0o644); err != nil {
			t.Fatal(err)
		}
		files := func() string {
			var l []string
			filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					l = append(l, p)
				}
				return nil
			})
			return strings.Join(l, " ")
		}
		before := files()
		imgs, err := s.Load(src)
		listed, lerr := s.List()
		if lerr != nil {
			t.Fatalf("List after Load (%v): %v", err, lerr)
		}
		if err != nil {
			if len(listed) != 0 {
				t.Errorf("Load failed (%v) but the store lists %v", err, listed)
			}
			if after := files(); after != before {
				t.Errorf("Load failed (%v) and left files: %s, before: %s", err, after, before)
			}
			return
		}
		for _, i := range imgs {
			if _, err := s.Resolve(i.ID.Hex); err != nil {
				t.Errorf("loaded image %s: %v", i.ID, err)
			}
		}
		for _, p := range strings.Fields(files()) {
			if p != src && !strings.HasPrefix(p, filepath.Join(dir, "store")+"/") {
				t.Errorf("Load wrote %s, outside the store", p)
			}
		}
		for _, i := range listed {
			if _, err := s.Remove(i.ID.Hex); err != nil {
				t.Fatalf("remove %s: %v", i.ID, err)
			}
		}
		if after := files(); after != before {
			t.Fatalf("files after the loaded images were removed: %s, before: %s", after, before)
		}
	})
}
