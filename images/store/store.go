// Package store is vessel's local, content-addressed OCI image store: an
// OCI image layout (image-spec v1.1 "image-layout.md") under the user's
// data directory, whose index.json names each image by reference in the
// org.opencontainers.image.ref.name annotation. Images come in from a
// `docker save` tarball, an OCI archive or an OCI layout directory
// (go-containerregistry reads them); every blob is checked against its
// digest before it is stored, and nothing is ever written outside the
// store.
package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/images/rootfs"
)

// refAnnotation names an image in index.json (OCI image-spec annotations).
const refAnnotation = "org.opencontainers.image.ref.name"

// Sentinel errors callers branch on.
var (
	// ErrNotFound: no image has that name or ID.
	ErrNotFound = errors.New("no such image")
	// ErrBadArchive: the input is not an image archive vessel can read,
	// or is corrupt.
	ErrBadArchive = errors.New("not a valid image archive")
	// ErrAmbiguous: an ID prefix matches more than one image.
	ErrAmbiguous = errors.New("ambiguous image ID")
)

// Store is an open image store. Its methods are safe for concurrent use
// within a process; an flock on the store serializes processes.
type Store struct {
	root string
	path layout.Path
	mu   sync.Mutex
}

// Image is one stored image.
type Image struct {
	// Ref is the full reference it is known by ("" for an untagged one).
	Ref string
	// ID is the digest of its manifest.
	ID v1.Hash
	// Size is the sum of its blobs' sizes.
	Size int64
}

// ShortID is the ID's first 12 hex digits, as docker shows it.
func (i Image) ShortID() string { return i.ID.Hex[:min(12, len(i.ID.Hex))] }

// DefaultRoot returns where the store lives: $XDG_DATA_HOME/vessel/images
// or ~/.local/share/vessel/images.
func DefaultRoot() (string, error) {
	d, err := DataDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "images"), nil
}

// DataDir is vessel's directory in the user's data directory:
// $XDG_DATA_HOME/vessel, or ~/.local/share/vessel.
func DataDir() (string, error) {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "vessel"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("store: no home directory for vessel's data: %w", err)
	}
	return filepath.Join(home, ".local", "share", "vessel"), nil
}

// Open opens the store at root, creating an empty one if needed.
func Open(root string) (*Store, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	p, err := layout.FromPath(root)
	if err != nil {
		if p, err = layout.Write(root, empty.Index); err != nil {
			return nil, fmt.Errorf("store: create layout in %s: %w", root, err)
		}
	}
	return &Store{root: root, path: p}, nil
}

// lock takes the store's process lock (and the in-process mutex).
func (s *Store) lock() (func(), error) {
	s.mu.Lock()
	f, err := os.OpenFile(filepath.Join(s.root, ".lock"), os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o644)
	if err != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		s.mu.Unlock()
		return nil, fmt.Errorf("store: lock: %w", err)
	}
	return func() { f.Close(); s.mu.Unlock() }, nil
}

// List returns the stored images, by reference then ID.
func (s *Store) List() ([]Image, error) {
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.list()
}

func (s *Store) list() ([]Image, error) {
	idx, err := s.path.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var out []Image
	for _, d := range im.Manifests {
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("store: image %s: %w", d.Digest, err)
		}
		m, err := img.Manifest()
		if err != nil {
			return nil, fmt.Errorf("store: image %s: %w", d.Digest, err)
		}
		size := d.Size + m.Config.Size
		for _, l := range m.Layers {
			size += l.Size
		}
		out = append(out, Image{Ref: d.Annotations[refAnnotation], ID: d.Digest, Size: size})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Ref != out[j].Ref {
			return out[i].Ref < out[j].Ref
		}
		return out[i].ID.Hex < out[j].ID.Hex
	})
	return out, nil
}

// Resolve finds an image by reference (normalized as docker does:
// "busybox" is index.docker.io/library/busybox:latest) or by ID (a
// "sha256:" digest or a prefix of its hex of at least 4 digits).
func (s *Store) Resolve(ref string) (Image, error) {
	unlock, err := s.lock()
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	return s.resolve(ref)
}

func (s *Store) resolve(ref string) (Image, error) {
	imgs, err := s.list()
	if err != nil {
		return Image{}, err
	}
	if full, err := normalize(ref); err == nil {
		for _, i := range imgs {
			if i.Ref == full {
				return i, nil
			}
		}
	}
	hexID := strings.TrimPrefix(ref, "sha256:")
	if len(hexID) >= 4 && isHex(hexID) {
		var found []Image
		for _, i := range imgs {
			if strings.HasPrefix(i.ID.Hex, hexID) && !containsID(found, i.ID) {
				found = append(found, i)
			}
		}
		switch len(found) {
		case 1:
			return found[0], nil
		case 0:
		default:
			return Image{}, fmt.Errorf("%w: %s", ErrAmbiguous, ref)
		}
	}
	return Image{}, fmt.Errorf("%w: %s", ErrNotFound, ref)
}

func containsID(l []Image, id v1.Hash) bool {
	for _, i := range l {
		if i.ID == id {
			return true
		}
	}
	return false
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s + strings.Repeat("0", len(s)%2))
	return err == nil
}

// normalize returns the full form of a reference.
func normalize(ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", err
	}
	return r.Name(), nil
}

// Image returns a stored image for reading.
func (s *Store) Image(i Image) (v1.Image, error) {
	idx, err := s.path.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	img, err := idx.Image(i.ID)
	if err != nil {
		return nil, fmt.Errorf("store: image %s: %w", i.ShortID(), err)
	}
	return img, nil
}

// Rootfs returns the read-only ext4 disk of a stored image (package
// rootfs), built on first use and cached under the store by image ID.
func (s *Store) Rootfs(i Image) (string, error) { return s.RootfsProgress(i, nil) }

// RootfsProgress is Rootfs reporting a build's progress (not called when
// the disk is cached).
func (s *Store) RootfsProgress(i Image, progress rootfs.Progress) (string, error) {
	unlock, err := s.lock()
	if err != nil {
		return "", err
	}
	defer unlock()
	img, err := s.Image(i)
	if err != nil {
		return "", err
	}
	return rootfs.Cached(filepath.Join(s.root, rootfsDir), i.ID, img, rootfs.Limits{}, progress)
}

// rootfsDir holds the images' ext4 disks, named <id hex>.ext4.
const rootfsDir = "rootfs"

// Remove untags ref (or, given an ID, removes every name of that image)
// and deletes the blobs no remaining image uses.
func (s *Store) Remove(ref string) (Image, error) {
	unlock, err := s.lock()
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	img, err := s.resolve(ref)
	if err != nil {
		return Image{}, err
	}
	byName := img.Ref != "" && img.Ref == mustNormalize(ref)
	err = s.path.RemoveDescriptors(func(d v1.Descriptor) bool {
		if d.Digest != img.ID {
			return false
		}
		return !byName || d.Annotations[refAnnotation] == img.Ref
	})
	if err != nil {
		return Image{}, fmt.Errorf("store: %w", err)
	}
	return img, s.gc()
}

func mustNormalize(ref string) string {
	full, _ := normalize(ref)
	return full
}

// gc deletes the blobs that no image in index.json references.
func (s *Store) gc() error {
	idx, err := s.path.ImageIndex()
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	keep := map[string]bool{}
	for _, d := range im.Manifests {
		keep[d.Digest.Hex] = true
		img, err := idx.Image(d.Digest)
		if err != nil {
			return fmt.Errorf("store: %w", err)
		}
		m, err := img.Manifest()
		if err != nil {
			return fmt.Errorf("store: %w", err)
		}
		keep[m.Config.Digest.Hex] = true
		for _, l := range m.Layers {
			keep[l.Digest.Hex] = true
		}
	}
	// Blobs, and the disks built from manifests, that nothing keeps.
	for _, dir := range []string{filepath.Join(s.root, "blobs", "sha256"), filepath.Join(s.root, rootfsDir)} {
		ents, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("store: %w", err)
		}
		for _, e := range ents {
			if !keep[strings.TrimSuffix(e.Name(), ".ext4")] {
				if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
					return fmt.Errorf("store: %w", err)
				}
			}
		}
	}
	return nil
}

// add stores img (verifying every blob against its digest) under ref
// ("" for none), replacing what ref named before.
func (s *Store) add(img v1.Image, ref string) (Image, error) {
	return s.addCounted(img, ref, nil)
}

// addCounted is add that reports the compressed layer bytes it has
// stored so far to count (if not nil), for progress displays.
func (s *Store) addCounted(img v1.Image, ref string, count func(int64)) (Image, error) {
	m, err := img.Manifest()
	if err != nil {
		return Image{}, fmt.Errorf("%w: manifest: %w", ErrBadArchive, err)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return Image{}, fmt.Errorf("%w: config: %w", ErrBadArchive, err)
	}
	if err := s.putBlob(m.Config.Digest, io.NopCloser(strings.NewReader(string(cfg)))); err != nil {
		return Image{}, err
	}
	layers, err := img.Layers()
	if err != nil {
		return Image{}, fmt.Errorf("%w: layers: %w", ErrBadArchive, err)
	}
	for i, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return Image{}, fmt.Errorf("%w: layer %d: %w", ErrBadArchive, i, err)
		}
		rc, err := l.Compressed()
		if err != nil {
			return Image{}, fmt.Errorf("%w: layer %d: %w", ErrBadArchive, i, err)
		}
		if count != nil {
			rc = &countingReader{rc: rc, count: count}
		}
		if err := s.putBlob(d, rc); err != nil {
			return Image{}, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	raw, err := img.RawManifest()
	if err != nil {
		return Image{}, fmt.Errorf("%w: manifest: %w", ErrBadArchive, err)
	}
	id, err := img.Digest()
	if err != nil {
		return Image{}, fmt.Errorf("%w: %w", ErrBadArchive, err)
	}
	if err := s.putBlob(id, io.NopCloser(strings.NewReader(string(raw)))); err != nil {
		return Image{}, err
	}
	mt, err := img.MediaType()
	if err != nil {
		return Image{}, fmt.Errorf("%w: %w", ErrBadArchive, err)
	}
	desc := v1.Descriptor{MediaType: mt, Size: int64(len(raw)), Digest: id}
	if ref != "" {
		desc.Annotations = map[string]string{refAnnotation: ref}
		if err := s.path.RemoveDescriptors(match.Annotation(refAnnotation, ref)); err != nil {
			return Image{}, fmt.Errorf("store: %w", err)
		}
	} else if err := s.path.RemoveDescriptors(func(d v1.Descriptor) bool {
		return d.Digest == id && d.Annotations[refAnnotation] == ""
	}); err != nil {
		return Image{}, fmt.Errorf("store: %w", err)
	}
	if err := s.path.AppendDescriptor(desc); err != nil {
		return Image{}, fmt.Errorf("store: %w", err)
	}
	size := desc.Size + m.Config.Size
	for _, l := range m.Layers {
		size += l.Size
	}
	return Image{Ref: ref, ID: id, Size: size}, nil
}

// putBlob writes a blob through a temporary file, checking its SHA-256,
// and renames it into place.
func (s *Store) putBlob(d v1.Hash, rc io.ReadCloser) error {
	defer rc.Close()
	if d.Algorithm != "sha256" || len(d.Hex) != 64 || !isHex(d.Hex) {
		return fmt.Errorf("%w: unsupported digest %q", ErrBadArchive, d)
	}
	dir := filepath.Join(s.root, "blobs", "sha256")
	final := filepath.Join(dir, d.Hex)
	if _, err := os.Stat(final); err == nil {
		return nil // content-addressed: already there
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".incoming-")
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, h), rc); err != nil {
		return fmt.Errorf("%w: blob %s: %w", ErrBadArchive, d, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Hex {
		return fmt.Errorf("%w: blob %s has digest sha256:%s", ErrBadArchive, d, got)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// countingReader reports every read's size.
type countingReader struct {
	rc    io.ReadCloser
	count func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.rc.Read(p)
	if n > 0 {
		c.count(int64(n))
	}
	return n, err
}

func (c *countingReader) Close() error { return c.rc.Close() }
