package container

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// MinScratch is the smallest scratch disk MakeScratch makes.
const MinScratch = 16 << 20

// MakeScratch creates path as a sparse file of size bytes (rounded up to
// a MiB) holding an empty ext4 file system, for a container's writable
// layer on a disk rather than in guest memory (--disk-size). It formats
// with the host's mkfs.ext4 (e2fsprogs), with lazy initialization so the
// file stays sparse until the container writes. On failure nothing is
// left at path.
func MakeScratch(path string, size uint64) (err error) {
	if size < MinScratch {
		return fmt.Errorf("scratch disk of %d bytes: at least %d MiB", size, MinScratch>>20)
	}
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	mkfs, err := findMkfs()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("scratch disk: %w", err)
	}
	defer func() {
		if err != nil {
			os.Remove(path)
		}
	}()
	err = f.Truncate(int64(size))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("scratch disk: %w", err)
	}
	cmd := exec.Command(mkfs, "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", path)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("scratch disk: mkfs.ext4: %v: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}

// findMkfs finds mkfs.ext4, which is in /sbin, off a user's $PATH on
// Debian.
func findMkfs() (string, error) {
	if p, err := exec.LookPath("mkfs.ext4"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("scratch disk: mkfs.ext4 not found (install e2fsprogs)")
}
