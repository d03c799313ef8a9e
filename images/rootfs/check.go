package rootfs

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// DefaultMaxSize is the most an image's layers may hold in files
// together unless the caller raises it (Limits).
const DefaultMaxSize = 8 << 30

// bytesPerEntry sets the entry limit that goes with a size limit: one
// entry per 8 KiB of it (1 Mi entries for the default 8 GiB). Each entry
// costs the ext4 writer an inode in memory, whatever its size.
const bytesPerEntry = 8 << 10

// minEntries is the entry limit of very small size limits.
const minEntries = 1024

// ErrTooLarge is returned for an image whose layers hold more bytes or
// more entries than the limits allow.
var ErrTooLarge = errors.New("rootfs: image too large")

// Limits bound what an image may expand to: the sum of its layers'
// uncompressed entry sizes and the number of their entries. They are
// checked against each entry's header, before its content is read or
// anything of it is written. A zero field takes the default.
type Limits struct {
	// Size is the most bytes the entries of all layers may hold.
	Size int64
	// Entries is the most entries all layers may hold.
	Entries int64
}

// LimitsFor returns the limits that go with a size limit: size bytes
// and one entry per 8 KiB of it.
func LimitsFor(size int64) Limits {
	return Limits{Size: size, Entries: max(size/bytesPerEntry, minEntries)}
}

// withDefaults fills in the zero fields.
func (l Limits) withDefaults() Limits {
	d := LimitsFor(DefaultMaxSize)
	if l.Size <= 0 {
		l.Size = d.Size
	}
	if l.Entries <= 0 {
		l.Entries = LimitsFor(l.Size).Entries
	}
	return l
}

// Stats is what an image's layers hold together.
type Stats struct {
	// Size is the sum of the entries' sizes (a sparse file counts its
	// full length).
	Size int64
	// Entries is the number of entries.
	Entries int64
}

// add counts one entry of size bytes, or fails with ErrTooLarge.
func (s *Stats) add(size int64, lim Limits) error {
	if s.Entries >= lim.Entries {
		return fmt.Errorf("%w: more than %d entries (the limit that goes with a size limit of %s)", ErrTooLarge, lim.Entries, human(lim.Size))
	}
	if size < 0 || size > lim.Size-s.Size {
		return fmt.Errorf("%w: its files expand to more than %s", ErrTooLarge, human(lim.Size))
	}
	s.Entries++
	s.Size += size
	return nil
}

// human formats a byte count in binary units.
func human(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dG", n>>30)
	case n >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(n)/(1<<30))
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dK", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// Check reads every layer of img, as Layers does.
func Check(img v1.Image, lim Limits) (Stats, error) {
	layers, err := img.Layers()
	if err != nil {
		return Stats{}, fmt.Errorf("rootfs: %w", err)
	}
	return Layers(layers, lim)
}

// Layers reads the layers in order and refuses an image that vessel
// would not build into a disk: an entry whose name or hard-link target
// climbs out of the root (".."), a symlink whose relative target does, an
// entry below a symlink or a non-directory (as the layers apply, with
// their whiteouts), a hard link to nothing or to a directory, a name
// component longer than ext4 allows, an entry type ext4 cannot hold
// (ErrUnsafeEntry); or layers that hold more than lim allows together
// (ErrTooLarge). It returns what the layers hold.
func Layers(layers []v1.Layer, lim Limits) (Stats, error) {
	c := checker{lim: lim.withDefaults(), root: &node{typ: tar.TypeDir}}
	// The layers' uncompressed streams, their tar headers, padding and
	// whatever follows the end of the archive included, are bounded too:
	// the build reads them to the end to verify their digests, and a
	// compressed layer can expand without bound past its last entry.
	budget := &budgetReader{left: c.lim.Size + c.lim.Entries*streamPerEntry + streamSlack}
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return c.st, fmt.Errorf("rootfs: layer %d: %w", i, err)
		}
		c.layer = int32(i)
		budget.r = rc
		err = c.check(budget)
		if err == nil {
			if _, err = io.Copy(io.Discard, budget); err != nil {
				err = fmt.Errorf("rootfs: reading the image: %w", err)
			}
		}
		rc.Close()
		if err != nil {
			return c.st, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return c.st, nil
}

// streamPerEntry and streamSlack bound a layer stream's bytes beyond its
// entries' contents: headers (PAX ones with long names and extended
// attributes included) and padding per entry, and the end of the archive.
const (
	streamPerEntry = 4 << 10
	streamSlack    = 1 << 20
)

// budgetReader reads from r until left bytes are used up, then fails
// with ErrTooLarge.
type budgetReader struct {
	r    io.Reader
	left int64
}

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("%w: its layers' tar streams are longer than their entries account for", ErrTooLarge)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}

// node is one path of the file system the layers make so far.
type node struct {
	typ      byte             // tar type: TypeDir, TypeSymlink, or that of another entry
	layer    int32            // the layer that last set it
	children map[string]*node // a directory's entries
}

// checker applies layers to a tree of nodes (names and types only).
type checker struct {
	lim   Limits
	st    Stats
	root  *node
	layer int32
}

const (
	whiteoutPrefix = ".wh."
	opaqueWhiteout = ".wh..wh..opq"
	// maxNameLen is ext4's limit on one name in a directory.
	maxNameLen = 255
)

// check applies one layer's tar stream.
func (c *checker) check(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("rootfs: reading the image: %w", err)
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			continue // PAX defaults for later entries, not a file
		}
		if err := c.st.add(h.Size, c.lim); err != nil {
			return err
		}
		if err := c.entry(h); err != nil {
			return err
		}
	}
}

// entry applies one header.
func (c *checker) entry(h *tar.Header) error {
	name, err := clean(h.Name)
	if err != nil {
		return err
	}
	if name == "." {
		if h.Typeflag != tar.TypeDir {
			return fmt.Errorf("%w: %q: the root is not a directory", ErrUnsafeEntry, h.Name)
		}
		return nil
	}
	dir, base := path.Split(name)
	for _, part := range strings.Split(name, "/") {
		if len(part) > maxNameLen {
			return fmt.Errorf("%w: %q: a name longer than %d bytes", ErrUnsafeEntry, h.Name, maxNameLen)
		}
	}
	parent, err := c.dir(strings.TrimSuffix(dir, "/"), h.Name)
	if err != nil {
		return err
	}
	switch {
	case base == opaqueWhiteout:
		// Hides what lower layers put in the directory.
		for k, n := range parent.children {
			if n.layer < c.layer {
				delete(parent.children, k)
			}
		}
		return nil
	case strings.HasPrefix(base, whiteoutPrefix):
		delete(parent.children, strings.TrimPrefix(base, whiteoutPrefix))
		return nil
	}
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeChar, tar.TypeBlock, tar.TypeFifo, tar.TypeDir:
	case tar.TypeSymlink:
		// A relative target resolves against the link's directory; an
		// absolute one against the root, wherever it points.
		if !path.IsAbs(h.Linkname) {
			t := path.Join(path.Dir(name), h.Linkname)
			if t == ".." || strings.HasPrefix(t, "../") {
				return fmt.Errorf("%w: symlink %q -> %q leaves the root", ErrUnsafeEntry, h.Name, h.Linkname)
			}
		}
	case tar.TypeLink:
		if err := c.linkTarget(h); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: %q has entry type %q", ErrUnsafeEntry, h.Name, h.Typeflag)
	}
	if parent.children == nil {
		parent.children = map[string]*node{}
	}
	old := parent.children[base]
	if old != nil && old.typ == tar.TypeDir && h.Typeflag == tar.TypeDir {
		old.layer = c.layer // a directory again: its entries stay
		return nil
	}
	parent.children[base] = &node{typ: h.Typeflag, layer: c.layer}
	return nil
}

// dir returns the directory at p (cleaned, relative to the root),
// creating missing ones as the build does; it refuses a path through a
// symlink or a non-directory.
func (c *checker) dir(p, entry string) (*node, error) {
	n := c.root
	if p == "" {
		return n, nil
	}
	walked := ""
	for _, part := range strings.Split(p, "/") {
		walked = path.Join(walked, part)
		child := n.children[part]
		switch {
		case child == nil:
			if n.children == nil {
				n.children = map[string]*node{}
			}
			child = &node{typ: tar.TypeDir, layer: c.layer}
			n.children[part] = child
		case child.typ == tar.TypeSymlink:
			return nil, fmt.Errorf("%w: %q is below %q, a symlink", ErrUnsafeEntry, entry, walked)
		case child.typ != tar.TypeDir:
			return nil, fmt.Errorf("%w: %q is below %q, which is not a directory", ErrUnsafeEntry, entry, walked)
		}
		n = child
	}
	return n, nil
}

// linkTarget accepts a hard link to a file the layers hold so far.
func (c *checker) linkTarget(h *tar.Header) error {
	t, err := clean(h.Linkname)
	if err != nil {
		return err
	}
	n := c.root
	for _, part := range strings.Split(t, "/") {
		if n.typ != tar.TypeDir || t == "." {
			n = nil
			break
		}
		n = n.children[part]
		if n == nil {
			break
		}
	}
	switch {
	case n == nil:
		return fmt.Errorf("%w: hard link %q -> %q: no such file in the image", ErrUnsafeEntry, h.Name, h.Linkname)
	case n.typ == tar.TypeDir:
		return fmt.Errorf("%w: hard link %q -> %q: a directory", ErrUnsafeEntry, h.Name, h.Linkname)
	}
	return nil
}
