package main

import (
	"archive/tar"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/vesselvm/vessel/images/store"
	"github.com/vesselvm/vessel/internal/bbimage"
)

// TestImageCommands drives `vessel image` end to end on a store in a
// temporary data directory.
func TestImageCommands(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("busybox:test")
	archive := filepath.Join(t.TempDir(), "busybox.tar")
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}
	corrupt := filepath.Join(t.TempDir(), "corrupt.tar")
	b, _ := os.ReadFile(archive)
	os.WriteFile(corrupt, b[:len(b)/3], 0o644)

	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"image", "load", archive}, 0},
		{[]string{"image", "ls"}, 0},
		{[]string{"image", "inspect", "busybox:test"}, 0},
		{[]string{"image", "load"}, exitUsage},
		{[]string{"image", "load", "-i", archive, archive}, exitUsage},
		{[]string{"image", "load", filepath.Join(t.TempDir(), "missing.tar")}, exitImage},
		{[]string{"image", "load", corrupt}, exitImage},
		{[]string{"image", "inspect", "alpine"}, exitImage},
		{[]string{"image", "rm"}, exitUsage},
		{[]string{"image", "rm", "busybox:test"}, 0},
		{[]string{"image", "rm", "busybox:test"}, exitImage},
	} {
		if got := run(tc.args); got != tc.want {
			t.Errorf("vessel %v: exit %d, want %d", tc.args, got, tc.want)
		}
	}
	root, _ := store.DefaultRoot()
	blobs, _ := os.ReadDir(filepath.Join(root, "blobs", "sha256"))
	if len(blobs) != 0 {
		t.Errorf("%d blobs left after removing the only image", len(blobs))
	}
}

// layerImage is an image of one layer holding entries (of zeros).
func layerImage(t *testing.T, entries ...tar.Header) v1.Image {
	t.Helper()
	img, err := bbimage.OneLayer(entries...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestImageLoadRefuses: `vessel image load` refuses an image with an
// entry that climbs out of its root, or over --max-image-size, with exit
// status 1 and nothing left in the store.
func TestImageLoadRefuses(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	archive := func(img v1.Image) string {
		p := filepath.Join(t.TempDir(), "img.tar")
		tag, _ := name.NewTag("bad:1")
		if err := tarball.WriteToFile(p, tag, img); err != nil {
			t.Fatal(err)
		}
		return p
	}
	escape := archive(layerImage(t, tar.Header{Name: "../x", Typeflag: tar.TypeReg, Size: 1}))
	big := archive(layerImage(t, tar.Header{Name: "big", Typeflag: tar.TypeReg, Size: 2 << 20}))
	root, _ := store.DefaultRoot()
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"image", "load", escape}, exitImage},
		{[]string{"image", "load", "--max-image-size", "1M", big}, exitImage},
		{[]string{"image", "load", "--max-image-size", "none", big}, exitUsage},
		{[]string{"image", "pull", "--max-image-size", "0", "busybox"}, exitUsage},
	} {
		if got := run(tc.args); got != tc.want {
			t.Errorf("vessel %v: exit %d, want %d", tc.args, got, tc.want)
		}
		if blobs, _ := os.ReadDir(filepath.Join(root, "blobs", "sha256")); len(blobs) != 0 {
			t.Errorf("vessel %v: %d blobs left", tc.args, len(blobs))
		}
	}
	if got := run([]string{"image", "load", "--max-image-size", "4M", big}); got != 0 {
		t.Errorf("loading within --max-image-size: exit %d", got)
	}
}

// TestImagePull pulls from go-containerregistry's in-process registry.
func TestImagePull(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(host + "/test/pulled:1")
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"image", "pull", host + "/test/pulled:1"}, 0},
		{[]string{"image", "inspect", host + "/test/pulled:1"}, 0},
		{[]string{"image", "pull", host + "/test/missing:1"}, exitImage},
		{[]string{"image", "pull", "Not A Reference"}, exitImage},
		{[]string{"image", "pull"}, exitUsage},
	} {
		if got := run(tc.args); got != tc.want {
			t.Errorf("vessel %v: exit %d, want %d", tc.args, got, tc.want)
		}
	}
}

func TestFamiliarAndSize(t *testing.T) {
	for in, want := range map[string]string{
		"index.docker.io/library/busybox:1": "busybox:1",
		"index.docker.io/team/app:v1":       "team/app:v1",
		"example.com/app:v1":                "example.com/app:v1",
	} {
		if got := familiar(in); got != want {
			t.Errorf("familiar(%q) = %q, want %q", in, got, want)
		}
	}
	for n, want := range map[int64]string{999: "999B", 1500: "1.5kB", 4_200_000: "4.2MB", 2e9: "2GB"} {
		if got := humanSize(n); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestContainerCommandsUsage: the container commands parse their flags
// (run's -h is --hostname, as docker's) and fail bad usage with docker's
// statuses, before touching any VM.
func TestContainerCommandsUsage(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"run", "--help"}, 0},
		{[]string{"run"}, exitRun},
		{[]string{"run", "--pull", "never", "-h", "host", "missing:1"}, exitRun},
		{[]string{"run", "-d", "-i", "missing:1"}, exitRun},
		{[]string{"exec", "--help"}, 0},
		{[]string{"exec", "c1"}, exitRun},
		{[]string{"exec", "c1", "true"}, exitRun},
		{[]string{"ps"}, 0},
		{[]string{"ps", "-a", "-q"}, 0},
		{[]string{"logs", "c1"}, exitContainer},
		{[]string{"stop", "c1"}, exitContainer},
		{[]string{"rm", "-f", "c1"}, exitContainer},
	} {
		if got := run(tc.args); got != tc.want {
			t.Errorf("vessel %v: exit %d, want %d", tc.args, got, tc.want)
		}
	}
}
