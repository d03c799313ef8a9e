// Package guestdir names the directory `make guest` installs the guest
// kernel (bzImage, vmlinux) and initramfs into, where vessel,
// vessel-runtime and the benchmarks find them unless told otherwise.
package guestdir

import (
	"os"
	"path/filepath"
)

// Dir is $VESSEL_GUEST_DIR when set, else vessel/guest in the user's
// cache directory (in the temporary directory when there is none).
func Dir() string {
	if d := os.Getenv("VESSEL_GUEST_DIR"); d != "" {
		return d
	}
	c, err := os.UserCacheDir()
	if err != nil {
		c = filepath.Join(os.TempDir(), "vessel-cache")
	}
	return filepath.Join(c, "vessel", "guest")
}
