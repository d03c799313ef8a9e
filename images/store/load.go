package store

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Load stores the images in src: a `docker save` tarball (plain or
// gzip-compressed), an OCI archive (a tar of an OCI layout), or an OCI
// layout directory. Images carry the names the archive gives them.
func (s *Store) Load(src string) ([]Image, error) {
	st, err := os.Stat(src)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	imgs, err := s.load(src, st.IsDir())
	if err != nil {
		// Blobs of an image that failed half-way belong to nothing.
		s.gc()
	}
	return imgs, err
}

func (s *Store) load(src string, isDir bool) ([]Image, error) {
	if isDir {
		return s.loadLayout(src)
	}
	kind, err := archiveKind(src)
	if err != nil {
		return nil, err
	}
	switch kind {
	case "docker":
		return s.loadDocker(src)
	default: // "oci"
		dir, err := os.MkdirTemp("", "vessel-oci-")
		if err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		defer os.RemoveAll(dir)
		if err := extractLayout(src, dir); err != nil {
			return nil, err
		}
		return s.loadLayout(dir)
	}
}

// openStream opens a file, decompressing it if it is gzip.
func openStream(src string) (io.ReadCloser, error) {
	f, err := os.Open(src)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	br := bufio.NewReader(f)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: %s: %w", ErrBadArchive, src, err)
		}
		return readCloser{zr, f}, nil
	}
	return readCloser{br, f}, nil
}

// openTar opens a possibly gzip-compressed tar file.
func openTar(src string) (*tar.Reader, io.Closer, error) {
	rc, err := openStream(src)
	if err != nil {
		return nil, nil, err
	}
	return tar.NewReader(rc), rc, nil
}

// archiveKind tells a docker-save tarball (manifest.json at the top) from
// an OCI archive (oci-layout at the top).
func archiveKind(src string) (string, error) {
	tr, c, err := openTar(src)
	if err != nil {
		return "", err
	}
	defer c.Close()
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return "", fmt.Errorf("%w: %s has neither manifest.json (docker save) nor oci-layout (OCI archive)", ErrBadArchive, src)
		}
		if err != nil {
			return "", fmt.Errorf("%w: %s: %w", ErrBadArchive, src, err)
		}
		switch path.Clean(h.Name) {
		case "manifest.json":
			return "docker", nil
		case "oci-layout":
			return "oci", nil
		}
	}
}

// loadDocker stores every tagged image of a docker-save tarball (and the
// untagged ones by ID).
func (s *Store) loadDocker(src string) ([]Image, error) {
	opener := func() (io.ReadCloser, error) { return openStream(src) }
	mf, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadArchive, src, err)
	}
	var out []Image
	for _, d := range mf {
		tags := d.RepoTags
		if len(tags) == 0 {
			tags = []string{""}
		}
		for _, t := range tags {
			var tag *name.Tag
			ref := ""
			if t != "" {
				tt, err := name.NewTag(t)
				if err != nil {
					return nil, fmt.Errorf("%w: %s: tag %q: %w", ErrBadArchive, src, t, err)
				}
				tag, ref = &tt, tt.Name()
			}
			img, err := tarball.Image(opener, tag)
			if err != nil {
				return nil, fmt.Errorf("%w: %s: %w", ErrBadArchive, src, err)
			}
			i, err := s.add(img, ref)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", src, err)
			}
			out = append(out, i)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s holds no image", ErrBadArchive, src)
	}
	return out, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// loadLayout stores the images listed in an OCI layout's index.json,
// named by their ref.name annotations (a bare tag like "latest" has no
// repository to go with it and is ignored).
func (s *Store) loadLayout(dir string) ([]Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadArchive, dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadArchive, dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadArchive, dir, err)
	}
	var out []Image
	for _, d := range im.Manifests {
		if !d.MediaType.IsImage() {
			continue // nested indexes (multi-platform) are not taken yet
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrBadArchive, dir, err)
		}
		ref := ""
		if r, ok := d.Annotations[refAnnotation]; ok && strings.ContainsAny(r, "/:") {
			if full, err := normalize(r); err == nil {
				ref = full
			}
		}
		i, err := s.add(img, ref)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
		out = append(out, i)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s holds no image", ErrBadArchive, dir)
	}
	return out, nil
}

// extractLayout unpacks an OCI archive into dir. Only the layout's own
// files are taken (oci-layout, index.json, blobs/<alg>/<hex>), as regular
// files: any other entry, a path that climbs out (".."), an absolute path
// or a link fails the load, so nothing is ever written outside dir.
func extractLayout(src, dir string) error {
	tr, c, err := openTar(src)
	if err != nil {
		return err
	}
	defer c.Close()
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %s: %w", ErrBadArchive, src, err)
		}
		if err := checkLayoutEntry(h); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrBadArchive, src, err)
		}
		if h.Typeflag == tar.TypeDir {
			continue
		}
		target := filepath.Join(dir, filepath.FromSlash(path.Clean(h.Name)))
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return fmt.Errorf("store: %w", err)
		}
		f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return fmt.Errorf("%w: %s: entry %q: %w", ErrBadArchive, src, h.Name, err)
		}
		_, err = io.Copy(f, tr)
		f.Close()
		if err != nil {
			return fmt.Errorf("%w: %s: %w", ErrBadArchive, src, err)
		}
	}
}

// errEntry reports an archive entry that has no place in an OCI layout.
var errEntry = errors.New("entry not allowed in an OCI layout")

// checkLayoutEntry accepts the names and types an OCI layout consists of.
func checkLayoutEntry(h *tar.Header) error {
	n := h.Name
	if strings.HasPrefix(n, "/") || strings.Contains(n, "\\") {
		return fmt.Errorf("%w: %q", errEntry, n)
	}
	for _, part := range strings.Split(strings.TrimSuffix(n, "/"), "/") {
		if part == ".." {
			return fmt.Errorf("%w: %q climbs out", errEntry, n)
		}
	}
	clean := path.Clean(n)
	switch h.Typeflag {
	case tar.TypeDir:
		if clean == "." || clean == "blobs" || (strings.HasPrefix(clean, "blobs/") && strings.Count(clean, "/") == 1) {
			return nil
		}
	case tar.TypeReg:
		switch {
		case clean == "oci-layout", clean == "index.json":
			return nil
		case strings.HasPrefix(clean, "blobs/") && strings.Count(clean, "/") == 2:
			alg, hexd := path.Split(strings.TrimPrefix(clean, "blobs/"))
			if _, err := v1.NewHash(strings.TrimSuffix(alg, "/") + ":" + hexd); err == nil {
				return nil
			}
		}
	}
	return fmt.Errorf("%w: %q (type %c)", errEntry, n, h.Typeflag)
}
