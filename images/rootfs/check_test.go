package rootfs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// FuzzLayers feeds the layer checker a hostile image's tar streams (the
// input split into two layers at its first 0xff byte, if any): it must
// not panic, must stay within its limits, and an accepted image's
// flattened stream must pass the build's own per-entry check.
func FuzzLayers(f *testing.F) {
	seed := func(hs ...tar.Header) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range hs {
			h.Size = 0
			if h.Typeflag == tar.TypeReg {
				h.Size = 1
			}
			tw.WriteHeader(&h)
			if h.Size > 0 {
				tw.Write([]byte("x"))
			}
		}
		tw.Close()
		return b.Bytes()
	}
	f.Add(seed(tar.Header{Name: "a/", Typeflag: tar.TypeDir}, tar.Header{Name: "a/b", Typeflag: tar.TypeReg}))
	f.Add(seed(tar.Header{Name: "s", Typeflag: tar.TypeSymlink, Linkname: "/etc"}, tar.Header{Name: "s/x", Typeflag: tar.TypeReg}))
	f.Add(seed(tar.Header{Name: "f", Typeflag: tar.TypeReg}, tar.Header{Name: "l", Typeflag: tar.TypeLink, Linkname: "f"}))
	two := append(seed(tar.Header{Name: "d/x", Typeflag: tar.TypeReg}), 0xff)
	f.Add(append(two, seed(tar.Header{Name: "d/.wh..wh..opq", Typeflag: tar.TypeReg}, tar.Header{Name: ".wh.d", Typeflag: tar.TypeReg})...))
	f.Fuzz(func(t *testing.T, data []byte) {
		var ls []v1.Layer
		for _, part := range bytes.SplitN(data, []byte{0xff}, 2) {
			part := part
			// Stored, not compressed: the layer's digest compresses
			// it, and deflate's set-up per input took most of the time.
			l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(part)), nil },
				tarball.WithCompressionLevel(gzip.NoCompression))
			if err != nil {
				// A part that starts as gzip does is read as a
				// compressed layer, and one whose gzip stream is
				// broken is refused here, by go-containerregistry,
				// before vessel's checker could see it.
				return
			}
			ls = append(ls, l)
		}
		lim := Limits{Size: 1 << 20, Entries: 64}
		st, err := Layers(ls, lim)
		if st.Size > lim.Size || st.Entries > lim.Entries {
			t.Fatalf("stats %+v beyond the limits %+v", st, lim)
		}
		if err != nil {
			return
		}
		img := image(t, ls...)
		flat := extract(t, img)
		if err := checked(bytes.NewReader(flat), io.Discard, lim); errors.Is(err, ErrUnsafeEntry) || errors.Is(err, ErrTooLarge) {
			t.Fatalf("accepted layers flatten to a stream the build refuses: %v", err)
		}
	})
}

// extract is img's flattened tar stream.
func extract(t *testing.T, img v1.Image) []byte {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return b
}
