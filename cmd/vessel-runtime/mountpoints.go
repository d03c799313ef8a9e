package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount points of a read-only root. runc creates a mount's destination
// in the rootfs when it is missing, before it makes the root read-only:
// containerd's CRI gives every pod sandbox a read-only root and binds
// /etc/resolv.conf (and /etc/hosts, /etc/hostname for its containers)
// into images that lack them. In the VM, the guest's runc cannot create
// them on a read-only rootfs share, so vessel-runtime creates them on
// the host first, in the bundle's rootfs, as runc on the host would:
// an empty file for a bind mount of a file, a directory otherwise. The
// share stays read-only to the guest.

// makeMountpoints creates the missing mount points of the spec's mounts
// that lie on the rootfs itself (not below an earlier mount, such as
// /dev/shm below a /dev tmpfs, which the guest's runc creates in that
// mount). Paths resolve inside the rootfs (openat2 RESOLVE_IN_ROOT), so
// the image's symbolic links cannot lead out of it.
func (b *bundle) makeMountpoints() error {
	var earlier []string
	for _, m := range b.spec.Mounts {
		dst := filepath.Clean("/" + m.Destination)
		covered := false
		for _, e := range earlier {
			if e == "/" || dst == e || strings.HasPrefix(dst, e+"/") {
				covered = true
				break
			}
		}
		earlier = append(earlier, dst)
		if covered || dst == "/" {
			continue
		}
		file := false
		if isBind(m) {
			for _, bd := range b.binds {
				if filepath.Clean(bd.vol.Destination) == dst {
					file = bd.file
				}
			}
		}
		if err := makeMountpoint(b.rootfs, dst, file); err != nil {
			return fmt.Errorf("rootfs: mount point %s: %w", dst, err)
		}
	}
	return nil
}

// makeMountpoint creates dst (absolute, clean) in rootfs unless it
// exists: its missing parents as directories, then itself as an empty
// file or a directory.
func makeMountpoint(rootfs, dst string, file bool) error {
	root, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	inRoot := func(p string, flags uint64) (int, error) {
		return unix.Openat2(root, p, &unix.OpenHow{Flags: flags | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	}
	rel := strings.TrimPrefix(dst, "/")
	if fd, err := inRoot(rel, unix.O_PATH); err == nil {
		unix.Close(fd)
		return nil
	} else if !errors.Is(err, unix.ENOENT) {
		return err
	}
	parts := strings.Split(rel, "/")
	dir, err := unix.Dup(root)
	if err != nil {
		return err
	}
	defer func() { unix.Close(dir) }()
	for i, name := range parts {
		last := i == len(parts)-1
		if last && file {
			fd, err := unix.Openat(dir, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
			if err != nil {
				return err
			}
			return unix.Close(fd)
		}
		// Resolve the prefix in the root again (a component may be a
		// symbolic link within it), creating it when missing.
		prefix := strings.Join(parts[:i+1], "/")
		next, err := inRoot(prefix, unix.O_PATH|unix.O_DIRECTORY)
		if errors.Is(err, unix.ENOENT) {
			if err := unix.Mkdirat(dir, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				return err
			}
			next, err = inRoot(prefix, unix.O_PATH|unix.O_DIRECTORY)
		}
		if err != nil {
			return err
		}
		unix.Close(dir)
		dir = next
	}
	return nil
}
