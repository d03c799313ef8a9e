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
	"golang.org/x/sys/unix"
)

// ErrUnsafeEntry is returned for an image entry that vessel refuses to
// build into a disk: a path that climbs out of the root (".."), an entry
// below a symlink, and the others Layers lists.
var ErrUnsafeEntry = errors.New("rootfs: unsafe entry in image")

// ErrNoSpace is returned when the disk's directory has less free space
// than the disk may take; it wraps ENOSPC.
var ErrNoSpace = errors.New("rootfs: not enough free space for the image's disk")

// Progress reports how many bytes of the image's flattened file system
// (as a tar stream) a build has converted so far.
type Progress func(done int64)

// defaultMaxDisk is tar2ext4's own bound on a disk's size, which an
// image within larger limits needs raised.
const defaultMaxDisk = 16 << 30

// Build writes img's file system (its layers applied in order, whiteouts
// honoured) as an ext4 image at dst, through a temporary file in the same
// directory that is renamed into place only when complete. The layers
// are checked first (Layers, within lim), and the directory must have
// room for the disk. Blocks of zeros, such as a sparse file's holes, stay
// holes in the disk file. progress, if not nil, is called as the
// conversion advances.
func Build(img v1.Image, dst string, lim Limits, progress Progress) error {
	lim = lim.withDefaults()
	// go-containerregistry's flattening skips unsafe entries without
	// saying so (and ends the stream cleanly): check every layer first,
	// so that such an image fails with a clear error instead of becoming
	// a different file system.
	st, err := Check(img, lim)
	if err != nil {
		return err
	}
	need := diskEstimate(st)
	dir := filepath.Dir(dst)
	if err := checkSpace(dir, need); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".rootfs-")
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
	go func() { pw.CloseWithError(checked(src, pw, lim)) }()
	out := &sparseFile{f: tmp}
	if err := tar2ext4.ConvertTarToExt4(pr, out, tar2ext4.InlineData, tar2ext4.MaximumDiskSize(max(need, defaultMaxDisk))); err != nil {
		pr.CloseWithError(err)
		return fmt.Errorf("rootfs: %w", err)
	}
	if err := out.finish(); err != nil {
		return err
	}
	// Durable before it is named: a cached disk is never rebuilt.
	if err := tmp.Sync(); err != nil {
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

// diskEstimate bounds the size of the disk of layers holding st: their
// bytes, a block, an inode and a directory entry per entry, and room for
// the metadata.
func diskEstimate(st Stats) int64 {
	return st.Size + st.Entries*(blockSize+256+264) + st.Size/1024 + 16<<20
}

// checkSpace fails with ErrNoSpace unless dir's file system has need
// bytes free for an unprivileged user.
func checkSpace(dir string, need int64) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return fmt.Errorf("rootfs: statfs %s: %w", dir, err)
	}
	if free := int64(fs.Bavail) * fs.Bsize; free < need {
		return fmt.Errorf("%w: it may take %s, %s has %s free: %w", ErrNoSpace, human(need), dir, human(free), unix.ENOSPC)
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
// building it first (within lim, reporting to progress, if not nil) if
// it is not there yet.
func Cached(dir string, id v1.Hash, img v1.Image, lim Limits, progress Progress) (string, error) {
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
	return dst, Build(img, dst, lim, progress)
}

// checked copies the tar stream r to w, entry by entry, refusing names
// and hard-link targets that climb out of the root, and a stream that
// holds more than lim allows. Absolute names are taken relative to the
// root, as docker does.
func checked(r io.Reader, w io.Writer, lim Limits) error {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	var st Stats
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return tw.Close()
		}
		if err != nil {
			return fmt.Errorf("rootfs: reading the image: %w", err)
		}
		if err := st.add(h.Size, lim); err != nil {
			return err
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
