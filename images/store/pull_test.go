package store

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/vesselvm/vessel/images/rootfs"
)

// TestPull pulls from go-containerregistry's in-process registry: the
// image lands under its name with the pushed digest, progress reaches the
// layers' total, and a missing image or registry fails with ErrPull and
// leaves no blob behind.
func TestPull(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	ref := u.Host + "/test/busybox:1"
	img, err := random.Image(4096, 3)
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(ref)
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()

	s := newStore(t)
	var done, total int64
	got, err := s.Pull(context.Background(), ref, func(d, t int64) { done, total = d, t })
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != want || got.Ref != tag.Name() {
		t.Errorf("pulled %+v, want ID %s under %s", got, want, tag.Name())
	}
	if total == 0 || done != total {
		t.Errorf("progress %d of %d, want all of a non-zero total", done, total)
	}
	if r, err := s.Resolve(ref); err != nil || r.ID != want {
		t.Errorf("Resolve after pull: %+v, %v", r, err)
	}

	empty := newStore(t)
	for _, bad := range []string{u.Host + "/test/missing:1", "127.0.0.1:1/test/x:1", "UPPER/case"} {
		if _, err := empty.Pull(context.Background(), bad, nil); !errors.Is(err, ErrPull) {
			t.Errorf("pull %s: %v, want ErrPull", bad, err)
		}
	}
	// An image vessel would not build a disk from is refused as it is
	// pulled, before it is named.
	bad, _ := name.NewTag(u.Host + "/test/bad:1")
	if err := remote.Write(bad, imageOf(t, tar.Header{Name: "../x", Typeflag: tar.TypeReg, Size: 1})); err != nil {
		t.Fatal(err)
	}
	if got, err := empty.Pull(context.Background(), bad.String(), nil); !errors.Is(err, rootfs.ErrUnsafeEntry) {
		t.Errorf("pulled %+v, %v; want ErrUnsafeEntry", got, err)
	}
	if imgs, _ := empty.List(); len(imgs) != 0 {
		t.Errorf("store holds %+v", imgs)
	}
	blobs, _ := os.ReadDir(filepath.Join(empty.root, "blobs", "sha256"))
	if len(blobs) != 0 {
		t.Errorf("%d blobs left by failed pulls", len(blobs))
	}
}
