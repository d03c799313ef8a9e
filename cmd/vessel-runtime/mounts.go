package main

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// The VMM process runs in a mount namespace of its own (create starts
// it with CLONE_NEWNS). There it serves the bundle's single-file bind
// mounts (docker's /etc/resolv.conf, /etc/hosts, /etc/hostname) to the
// guest without their siblings: the guest's 9P client cannot mount a
// share whose root is a file, so the files are bound onto empty files
// of a small tmpfs, and that directory is one share (filesTag). The
// mounts are the VMM process's alone and vanish with it, however it
// ends.

// privateMounts makes the VMM process's mount namespace a slave of the
// host's: mounts it makes do not reach the host (a host whose root is
// shared would otherwise see them), while the host's unmounts (of the
// bundle's rootfs, say) still reach it.
func privateMounts() error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make the VMM's mounts private: %w", err)
	}
	return nil
}

// filesDir is the directory, in the state directory, of the files share.
const filesDir = "files"

// bindFiles lays out the files share in dir/files: a tmpfs with one
// empty file per single-file bind mount (named by its Volume.Path), the
// host file bound on it (read-only when the mount is), and the tmpfs
// then made read-only, so the guest can write to a read-write file but
// cannot create, remove or rename anything in the share. It returns the
// share's directory, or "" when there are no file binds.
func bindFiles(dir string, binds []bind) (string, error) {
	n := 0
	for _, b := range binds {
		if b.file {
			n++
		}
	}
	if n == 0 {
		return "", nil
	}
	share := filepath.Join(dir, filesDir)
	if err := os.Mkdir(share, 0o700); err != nil {
		return "", fmt.Errorf("files share: %w", err)
	}
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := unix.Mount("tmpfs", share, "tmpfs", flags, fmt.Sprintf("mode=0755,size=4k,nr_inodes=%d", n+8)); err != nil {
		return "", fmt.Errorf("files share: mount tmpfs on %s: %w", share, err)
	}
	for _, b := range binds {
		if !b.file {
			continue
		}
		target := filepath.Join(share, b.vol.Path)
		if err := os.WriteFile(target, nil, 0o644); err != nil {
			return "", fmt.Errorf("files share: %w", err)
		}
		if err := unix.Mount(b.source, target, "", unix.MS_BIND, ""); err != nil {
			return "", fmt.Errorf("bind mount of %s at %s: %w", b.source, b.vol.Destination, err)
		}
		// A bind mount takes its flags from a remount: a read-only bind
		// is made so, and nothing bound runs, has devices or set-ID bits
		// through the share.
		fl := uintptr(unix.MS_REMOUNT | unix.MS_BIND | flags)
		if b.vol.ReadOnly {
			fl |= unix.MS_RDONLY
		}
		if err := unix.Mount("", target, "", fl, ""); err != nil {
			return "", fmt.Errorf("bind mount of %s at %s: remount: %w", b.source, b.vol.Destination, err)
		}
	}
	if err := unix.Mount("", share, "", unix.MS_REMOUNT|unix.MS_RDONLY|flags, ""); err != nil {
		return "", fmt.Errorf("files share: remount read-only: %w", err)
	}
	return share, nil
}
