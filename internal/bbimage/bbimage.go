// Package bbimage builds the small OCI image vessel's end-to-end tests
// and benchmarks run containers from: Debian's static busybox (the
// busybox-static package) with every applet linked in /bin, an
// /etc/passwd with root, a user "app" (uid 1000, also in group "extra",
// 2000) and nobody, a web root at /www, and a config whose defaults the
// tests check.
package bbimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Busybox is where Debian's busybox-static installs its binary.
const Busybox = "/bin/busybox"

// Index is the body of /www/index.html.
const Index = "served from the container\n"

// Config is the image's configuration: PATH and IMAGE_VAR in the
// environment, /srv as working directory, and a command that prints
// them and $HOME.
var Config = v1.Config{
	Env:        []string{"PATH=/bin", "IMAGE_VAR=from-image"},
	WorkingDir: "/srv",
	Cmd:        []string{"sh", "-c", "echo IMAGE_VAR=$IMAGE_VAR cwd=$(pwd) home=$HOME"},
}

// Build returns the image: one layer and Config.
func Build() (v1.Image, error) {
	bb, err := os.ReadFile(Busybox)
	if err != nil {
		return nil, fmt.Errorf("bbimage: Debian's busybox-static (make deps installs it): %w", err)
	}
	list, err := exec.Command(Busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("bbimage: busybox --list: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body string) {
		h.Size = int64(len(body))
		tw.WriteHeader(h)
		io.WriteString(tw, body)
	}
	dir := func(n string, mode int64) { add(&tar.Header{Name: n, Typeflag: tar.TypeDir, Mode: mode}, "") }
	file := func(n, body string) { add(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644}, body) }
	dir("bin/", 0o755)
	add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, string(bb))
	for _, applet := range strings.Fields(string(list)) {
		if applet != "busybox" && !strings.ContainsAny(applet, "[/") {
			add(&tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, "")
		}
	}
	dir("etc/", 0o755)
	file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
	file("etc/group", "root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n")
	dir("root/", 0o700)
	dir("home/", 0o755)
	add(&tar.Header{Name: "home/app/", Typeflag: tar.TypeDir, Mode: 0o755, Uid: 1000, Gid: 1000}, "")
	dir("srv/", 0o755)
	dir("www/", 0o755)
	file("www/index.html", Index)
	dir("tmp/", 0o1777)
	for _, d := range []string{"proc/", "sys/", "dev/"} {
		dir(d, 0o755)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("bbimage: %w", err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		return nil, fmt.Errorf("bbimage: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("bbimage: %w", err)
	}
	return mutate.Config(img, Config)
}

// OneLayer returns an image of a single layer holding entries, each
// followed by Size zero bytes: the hostile or oversized images that the
// image store's and the CLI's tests feed to vessel.
func OneLayer(entries ...tar.Header) (v1.Image, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range entries {
		if err := tw.WriteHeader(&h); err != nil {
			return nil, fmt.Errorf("bbimage: %s: %w", h.Name, err)
		}
		if _, err := tw.Write(make([]byte, h.Size)); err != nil {
			return nil, fmt.Errorf("bbimage: %s: %w", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b.Bytes())), nil })
	if err != nil {
		return nil, err
	}
	return mutate.AppendLayers(empty.Image, l)
}

// BuildForHost returns the image as Build does, with its platform named
// (linux and this machine's architecture): ctr imports only images of
// its own platform, and docker warns about an image without one.
func BuildForHost() (v1.Image, error) {
	img, err := Build()
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	return mutate.ConfigFile(img, cf)
}
