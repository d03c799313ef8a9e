//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/images/store"
)

// busyboxArchive writes a two-layer image of Debian's static busybox as
// `docker save` would: the binary and /bin/sh in the first layer, a file
// the second layer replaces and one it deletes (a whiteout).
func busyboxArchive(t *testing.T, path, tag string) {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("Debian's busybox-static (make deps installs it): %v", err)
	}
	type file struct {
		name, body, link string
		typ              byte
		mode             int64
	}
	mk := func(files ...file) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, f := range files {
			h := &tar.Header{Name: f.name, Typeflag: f.typ, Mode: f.mode, Linkname: f.link, Size: int64(len(f.body))}
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
			io.WriteString(tw, f.body)
		}
		tw.Close()
		return buf.Bytes()
	}
	base := mk(
		file{name: "bin/", typ: tar.TypeDir, mode: 0o755},
		file{name: "bin/busybox", body: string(bb), typ: tar.TypeReg, mode: 0o755},
		file{name: "bin/sh", link: "busybox", typ: tar.TypeSymlink, mode: 0o777},
		file{name: "etc/", typ: tar.TypeDir, mode: 0o755},
		file{name: "etc/motd", body: "from the lower layer\n", typ: tar.TypeReg, mode: 0o644},
		file{name: "etc/gone", body: "deleted above\n", typ: tar.TypeReg, mode: 0o644},
	)
	top := mk(
		file{name: "etc/motd", body: "from the upper layer\n", typ: tar.TypeReg, mode: 0o644},
		file{name: "etc/.wh.gone", typ: tar.TypeReg, mode: 0o644},
	)
	img := empty.Image
	for _, b := range [][]byte{base, top} {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	tg, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(path, tg, img); err != nil {
		t.Fatal(err)
	}
}

// TestImageRootfs: an image loaded with `vessel image load` becomes a
// read-only ext4 disk that a real guest mounts under an overlay with a
// tmpfs upper layer and runs the image's busybox from; the cached disk is
// unchanged afterwards.
func TestImageRootfs(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	data := t.TempDir()
	archive := filepath.Join(t.TempDir(), "busybox.tar")
	busyboxArchive(t, archive, "vessel-e2e/busybox:1")
	load := exec.Command(vesselBin, "image", "load", archive)
	load.Env = append(os.Environ(), "XDG_DATA_HOME="+data)
	if out, err := load.CombinedOutput(); err != nil || !strings.Contains(string(out), "Loaded image: vessel-e2e/busybox:1") {
		t.Fatalf("vessel image load: %v\n%s", err, out)
	}
	s, err := store.Open(filepath.Join(data, "vessel", "images"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.Resolve("vessel-e2e/busybox:1")
	if err != nil {
		t.Fatal(err)
	}
	disk, err := s.Rootfs(img)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(disk)
	r := vessel(t, "vm", "run", "--kernel", filepath.Join(guestDir, "bzImage"), "--initrd", guestInitrd(t),
		"--disk", disk+",ro,serial=rootfs",
		"--", "/e2e.test", "-e2e.guest", "-test.run", "^TestGuestImageRootfs$", "-test.v")
	if r.code != 0 || !strings.Contains(r.stdout, "--- PASS: TestGuestImageRootfs") {
		t.Fatalf("guest check failed:\n%v", r)
	}
	if after, _ := os.ReadFile(disk); !bytes.Equal(before, after) {
		t.Error("the cached image disk changed")
	}
}

// TestGuestImageRootfs is the guest half of TestImageRootfs.
func TestGuestImageRootfs(t *testing.T) {
	if !*guestMode {
		t.Skip("guest half of TestImageRootfs; runs inside the VM")
	}
	for _, d := range []string{"/image", "/rw", "/ctr"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("/dev/vda", "/image", "ext4", unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("mount the image disk: %v", err)
	}
	if err := unix.Mount("tmpfs", "/rw", "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll("/rw/upper", 0o755)
	os.MkdirAll("/rw/work", 0o755)
	if err := unix.Mount("overlay", "/ctr", "overlay", 0, "lowerdir=/image,upperdir=/rw/upper,workdir=/rw/work"); err != nil {
		t.Fatalf("mount the overlay: %v", err)
	}
	cmd := exec.Command("/bin/sh", "-c", "busybox cat /etc/motd; busybox ls /etc; echo written > /etc/new; busybox cat /etc/new; busybox | busybox head -1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: "/ctr"}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("busybox from the image: %v\n%s", err, out)
	}
	got := string(out)
	for _, want := range []string{"from the upper layer", "written", "BusyBox"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "gone") {
		t.Errorf("the whiteout did not hide /etc/gone:\n%s", got)
	}
	if _, err := os.Stat("/rw/upper/etc/new"); err != nil {
		t.Errorf("the container's write did not land in the upper layer: %v", err)
	}
	if _, err := os.Stat("/image/etc/new"); err == nil {
		t.Error("the container's write reached the image disk")
	}
}
