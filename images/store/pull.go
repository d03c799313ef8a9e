package store

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// ErrPull wraps a failure to fetch an image from its registry (not
// found, denied, unreachable).
var ErrPull = errors.New("pull failed")

// PullProgress reports a pull's progress: the compressed layer bytes
// stored so far out of total. It is called from the pulling goroutine.
type PullProgress func(done, total int64)

// Pull fetches ref from its registry (docker's defaults: Docker Hub and
// "latest"; plain HTTP only for a registry on localhost or a loopback
// address), for linux/amd64 when ref names a multi-platform index, and
// stores it under ref. Credentials come from the docker config
// (~/.docker/config.json), as docker pull's. Every blob is checked
// against its digest as it is stored.
func (s *Store) Pull(ctx context.Context, ref string, progress PullProgress) (Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return Image{}, fmt.Errorf("%w: invalid reference %q: %v", ErrPull, ref, err)
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		return Image{}, pullErr(r, err)
	}
	var total int64
	if m, err := img.Manifest(); err == nil {
		for _, l := range m.Layers {
			total += l.Size
		}
	}
	var done int64
	count := func(n int64) {
		done += n
		if progress != nil {
			progress(done, total)
		}
	}
	unlock, err := s.lock()
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	i, err := s.addCounted(img, r.Name(), count)
	if err != nil {
		s.gc() // blobs of a half-pulled image belong to nothing
		if errors.Is(err, ErrBadArchive) {
			return Image{}, pullErr(r, err)
		}
		return Image{}, err
	}
	return i, nil
}

// pullErr says why a pull failed in one line.
func pullErr(r name.Reference, err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusNotFound:
			return fmt.Errorf("%w: %s: not found in %s", ErrPull, r.Name(), r.Context().RegistryStr())
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w: %s: access denied (log in with docker login)", ErrPull, r.Name())
		}
	}
	return fmt.Errorf("%w: %s: %v", ErrPull, r.Name(), err)
}
