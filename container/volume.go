package container

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Volume is a host directory bound into the container (docker run's
// -v HOSTDIR:PATH[:ro]).
type Volume struct {
	HostDir     string // absolute and clean
	Destination string // absolute and clean, in the container
	ReadOnly    bool
}

// ParseVolume parses -v HOSTDIR:PATH[:OPTION] with OPTION ro or rw (one
// of them: "ro,rw" is refused, as docker refuses it).
// HOSTDIR is an absolute path or one starting with "." (relative to the
// working directory, as docker's CLI takes it); a bare name would be a
// named volume, which vessel does not have. The directory must exist:
// docker's -v creates a missing one, which hides a mistyped path, so
// vessel refuses it as docker's --mount does. Only directories can be
// shared.
func ParseVolume(s string) (Volume, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return Volume{}, errors.New("want HOSTDIR:PATH[:ro]")
	}
	var v Volume
	src, dst := parts[0], parts[1]
	if !strings.HasPrefix(src, "/") && !strings.HasPrefix(src, ".") {
		return Volume{}, fmt.Errorf("%q is a volume name; vessel has no named volumes: give a host directory (an absolute path, or one starting with .)", src)
	}
	if !strings.HasPrefix(dst, "/") {
		return Volume{}, fmt.Errorf("the container path %q is not absolute", dst)
	}
	if v.Destination = path.Clean(dst); v.Destination == "/" {
		return Volume{}, errors.New("cannot mount over the container's root")
	}
	if len(parts) == 3 {
		opts := strings.Split(parts[2], ",")
		if len(opts) > 1 {
			return Volume{}, fmt.Errorf("options %q: want one of ro or rw", parts[2])
		}
		switch opts[0] {
		case "ro":
			v.ReadOnly = true
		case "rw":
		default:
			return Volume{}, fmt.Errorf("unknown option %q: want ro or rw", opts[0])
		}
	}
	abs, err := filepath.Abs(src)
	if err != nil {
		return Volume{}, err
	}
	st, err := os.Stat(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return Volume{}, fmt.Errorf("host directory %s does not exist", abs)
	case err != nil:
		return Volume{}, err
	case !st.IsDir():
		return Volume{}, fmt.Errorf("%s is not a directory: only directories can be shared", abs)
	}
	v.HostDir = abs
	return v, nil
}
