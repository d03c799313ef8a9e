// Package rootfs turns an OCI image into the read-only disk a guest
// mounts as a container's root file system.
//
// The format is ext4, written by hcsshim's tar2ext4 straight from the
// image's flattened tar stream: the guest kernel has ext4 built in, and
// the conversion runs in pure Go without root while keeping owners,
// modes, extended attributes and device nodes exactly as the image has
// them (extracting to a host directory and running mkfs.ext4 -d would
// need root for those, and would put image content on the host's file
// system). erofs or squashfs would be smaller, but have no writer in Go
// that is as well proven, or need tools outside Go. The container's
// writes go to an overlayfs upper directory in the guest, never to this
// disk, which is attached read-only.
package rootfs

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// ErrUnsafeEntry is returned for an image entry whose path climbs out of
// the root ("..").
var ErrUnsafeEntry = errors.New("rootfs: unsafe path in image")

// Progress reports how many bytes of the image's flattened file system
// (as a tar stream) a build has converted so far.
type Progress func(done int64)

// Build writes img's file system (its layers applied in order, whiteouts
// honoured) as an ext4 image at dst, through a temporary file in the same
// directory that is renamed into place only when complete. progress, if
// not nil, is called as the conversion advances.
func Build(img v1.Image, dst string, progress Progress) error {
	// go-containerregistry's flattening skips unsafe entries without
	// saying so (and ends the stream cleanly): check every layer first,
	// so that such an image fails with a clear error instead of becoming
	// a different file system.
	if err := checkLayers(img); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".rootfs-")
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()

	flat := mutate.Extract(img)
	defer flat.Close()
	pr, pw := io.Pipe()
	var src io.Reader = flat
	if progress != nil {
		src = &progressReader{r: flat, f: progress}
	}
	go func() { pw.CloseWithError(checked(src, pw)) }()
	if err := tar2ext4.ConvertTarToExt4(pr, tmp, tar2ext4.InlineData); err != nil {
		pr.CloseWithError(err)
		return fmt.Errorf("rootfs: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	return nil
}

// progressReader reports the running total of what is read through it.
type progressReader struct {
	r    io.Reader
	f    Progress
	done int64
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	if n > 0 {
		p.f(p.done)
	}
	return n, err
}

// Cached returns the ext4 image of img in dir, named by the image ID,
// building it first (reporting to progress, if not nil) if it is not
// there yet.
func Cached(dir string, id v1.Hash, img v1.Image, progress Progress) (string, error) {
	if id.Algorithm != "sha256" || len(id.Hex) != 64 {
		return "", fmt.Errorf("rootfs: unexpected image ID %q", id)
	}
	dst := filepath.Join(dir, id.Hex+".ext4")
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("rootfs: %w", err)
	}
	return dst, Build(img, dst, progress)
}

// checkLayers reads every layer and refuses entries whose path, or whose
// link target, climbs out of the root.
func checkLayers(img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return fmt.Errorf("rootfs: layer %d: %w", i, err)
		}
		err = checkLayer(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return nil
}

func checkLayer(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("rootfs: reading the image: %w", err)
		}
		if _, err := clean(h.Name); err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeLink:
			if _, err := clean(h.Linkname); err != nil {
				return err
			}
		case tar.TypeSymlink:
			// A relative target resolves against the link's directory;
			// an absolute one against the root, wherever it points.
			if name, _ := clean(h.Name); !path.IsAbs(h.Linkname) {
				t := path.Join(path.Dir(name), h.Linkname)
				if t == ".." || strings.HasPrefix(t, "../") {
					return fmt.Errorf("%w: symlink %q -> %q leaves the root", ErrUnsafeEntry, h.Name, h.Linkname)
				}
			}
		}
	}
}

// checked copies the tar stream r to w, entry by entry, refusing names
// and hard-link targets that climb out of the root. Absolute names are
// taken relative to the root, as docker does.
func checked(r io.Reader, w io.Writer) error {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return tw.Close()
		}
		if err != nil {
			return fmt.Errorf("rootfs: reading the image: %w", err)
		}
		name, err := clean(h.Name)
		if err != nil {
			return err
		}
		h.Name = name
		if h.Typeflag == tar.TypeLink {
			if h.Linkname, err = clean(h.Linkname); err != nil {
				return err
			}
		}
		if name == "." {
			continue // the root itself
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return fmt.Errorf("rootfs: reading the image: %w", err)
		}
	}
}

// clean returns a tar name relative to the root, or ErrUnsafeEntry.
func clean(name string) (string, error) {
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q", ErrUnsafeEntry, name)
		}
	}
	c := path.Clean("/" + name)
	if c == "/" {
		return ".", nil
	}
	return c[1:], nil
}
