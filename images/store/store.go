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
	"encoding/json"
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
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/images/rootfs"
	"github.com/vesselvm/vessel/internal/atomicfile"
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
	root   string
	path   layout.Path
	mu     sync.Mutex
	limits rootfs.Limits
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
	s := &Store{root: root, path: layout.Path(root)}
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(root, "index.json")); errors.Is(err, os.ErrNotExist) {
		if err := writeFileAtomic(filepath.Join(root, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
			return nil, err
		}
		if err := s.writeIndex(&v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := s.sweep(); err != nil {
		return nil, err
	}
	return s, nil
}

// sweep removes what an operation killed half-way (SIGKILL, a crash, a
// power cut) left in the store: the temporary files it was writing (a
// blob, an image's disk, index.json) and the blobs of an image it had not
// yet named in index.json. Every writer holds the store's lock, which
// the caller holds: nothing swept is in use.
func (s *Store) sweep() error {
	ents, err := os.ReadDir(s.root)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	for _, e := range ents {
		if isTemp(e.Name()) {
			if err := os.Remove(filepath.Join(s.root, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("store: %w", err)
			}
		}
	}
	return s.gc()
}

// isTemp reports whether name, in the store's top directory, is one of
// writeFileAtomic's temporary files.
func isTemp(name string) bool {
	for _, f := range []string{"index.json", "oci-layout"} {
		if strings.HasPrefix(name, atomicfile.TempPrefix(f)) {
			return true
		}
	}
	return false
}

// SetLimits sets what an image may expand to (rootfs.Limits), checked
// when an image is loaded or pulled and when its disk is built; the zero
// value is rootfs's default.
func (s *Store) SetLimits(l rootfs.Limits) {
	s.mu.Lock()
	s.limits = l
	s.mu.Unlock()
}

// readIndex reads index.json.
func (s *Store) readIndex() (*v1.IndexManifest, error) {
	f, err := os.Open(filepath.Join(s.root, "index.json"))
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	defer f.Close()
	im, err := v1.ParseIndexManifest(f)
	if err != nil {
		return nil, fmt.Errorf("store: index.json: %w", err)
	}
	return im, nil
}

// writeIndex replaces index.json with im, atomically and durably.
func (s *Store) writeIndex(im *v1.IndexManifest) error {
	b, err := json.Marshal(im)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return writeFileAtomic(filepath.Join(s.root, "index.json"), b)
}

// updateIndex rewrites index.json with the descriptors keep accepts and
// then add (if not nil) appended.
func (s *Store) updateIndex(keep func(v1.Descriptor) bool, add *v1.Descriptor) error {
	im, err := s.readIndex()
	if err != nil {
		return err
	}
	var out []v1.Descriptor
	for _, d := range im.Manifests {
		if keep(d) {
			out = append(out, d)
		}
	}
	if add != nil {
		out = append(out, *add)
	}
	im.Manifests = out
	return s.writeIndex(im)
}

// writeFileAtomic replaces name with b (mode 0644), synced, so that a
// reader or a crash sees the old file or the new one whole.
func writeFileAtomic(name string, b []byte) error {
	if err := atomicfile.Write(name, b, 0o644, true); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// syncDir makes the names in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("store: sync %s: %w", dir, err)
	}
	return nil
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
	return rootfs.Cached(filepath.Join(s.root, rootfsDir), i.ID, img, s.limits, progress)
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
	err = s.updateIndex(func(d v1.Descriptor) bool {
		return d.Digest != img.ID || byName && d.Annotations[refAnnotation] != img.Ref
	}, nil)
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
	stored := make([]v1.Layer, len(layers))
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
		if stored[i], err = tarball.LayerFromFile(s.blobPath(d)); err != nil {
			return Image{}, fmt.Errorf("store: layer %d: %w", i, err)
		}
	}
	// Refuse, before the image is named, what its disk could not be
	// built from: unsafe entries, more than the limits allow.
	if _, err := rootfs.Layers(stored, s.limits); err != nil {
		return Image{}, err
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
	}
	if err := syncDir(filepath.Dir(s.blobPath(id))); err != nil {
		return Image{}, err
	}
	// What ref named before, or the same image untagged, gives way.
	if err := s.updateIndex(func(d v1.Descriptor) bool {
		if ref != "" {
			return d.Annotations[refAnnotation] != ref
		}
		return d.Digest != id || d.Annotations[refAnnotation] != ""
	}, &desc); err != nil {
		return Image{}, err
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
	final := s.blobPath(d)
	dir := filepath.Dir(final)
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
	// Durable before it is named (its directory is synced before
	// index.json names the image).
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("store: sync blob %s: %w", d, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// blobPath is where the blob of digest d (SHA-256) is stored.
func (s *Store) blobPath(d v1.Hash) string {
	return filepath.Join(s.root, "blobs", "sha256", d.Hex)
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
