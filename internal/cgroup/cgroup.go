//go:build linux

// Package cgroup makes the host cgroup v2 groups vessel's VMM processes
// are born in (clone3's CLONE_INTO_CGROUP, through
// syscall.SysProcAttr.UseCgroupFD): a jailed VMM's (internal/jail) and
// vessel-runtime's, at the path the container's manager names. It
// follows the kernel's Documentation/admin-guide/cgroup-v2.rst: a
// controller's interface files exist in a group only when its parent
// lists the controller in cgroup.subtree_control, so making a group with
// limits enables their controllers from the hierarchy's root down.
package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Root is where the host's cgroup v2 hierarchy is mounted.
const Root = "/sys/fs/cgroup"

// Own is this process's cgroup v2 path, from the hierarchy's root
// ("0::/path" in /proc/self/cgroup).
func Own() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("cgroup: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("cgroup: /proc/self/cgroup has no cgroup v2 entry")
}

// Writable reports why root is not a cgroup v2 hierarchy this process
// may make groups in; nil when it is.
func Writable(root string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return fmt.Errorf("cgroup: %s: %w", root, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("cgroup: %s is not a cgroup v2 hierarchy", root)
	}
	if err := unix.Access(root, unix.W_OK); err != nil {
		return fmt.Errorf("cgroup: %s: %w", root, err)
	}
	return nil
}

// A Limit is one interface file of a group and the value written to it.
type Limit struct {
	File, Value string
	// Optional limits are skipped where the kernel has no such file
	// (memory.swap.max without swap accounting).
	Optional bool
}

// ErrHasChildren is a group Make was asked to take that holds groups of
// its own: a process cannot join it (cgroup v2's "no internal
// processes"), and limits written to it would bound everything below.
var ErrHasChildren = errors.New("cgroup: the group has child groups")

// Make makes the group dir below root, or takes it when it exists as a
// leaf, and writes its limits in order. Each group on the way from root
// is made when missing and delegates the controllers the limits name
// (the part of a file's name before its first dot). made lists the
// groups Make created, the deepest last: the caller's to remove (Remove)
// once their processes are gone. On an error nothing it made is left.
func Make(root, dir string, limits []Limit) (made []string, err error) {
	rel, err := filepath.Rel(root, dir)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") || !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("cgroup: %s is not below %s", dir, root)
	}
	defer func() {
		if err != nil {
			Remove(made)
			made = nil
		}
	}()
	var ctls []string
	for _, l := range limits {
		ctl, _, _ := strings.Cut(l.File, ".")
		if !slices.Contains(ctls, ctl) {
			ctls = append(ctls, ctl)
		}
	}
	parent := root
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		if err := enable(parent, ctls); err != nil {
			return made, fmt.Errorf("cgroup: %s: %w", dir, err)
		}
		next := filepath.Join(parent, part)
		if err := os.Mkdir(next, 0o755); err == nil {
			made = append(made, next)
		} else if !errors.Is(err, fs.ErrExist) {
			return made, fmt.Errorf("cgroup: %w", err)
		}
		parent = next
	}
	if len(made) == 0 || made[len(made)-1] != dir {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return made, fmt.Errorf("cgroup: %w", err)
		}
		for _, e := range ents {
			if e.IsDir() {
				return made, fmt.Errorf("%w: %s", ErrHasChildren, dir)
			}
		}
	}
	for _, l := range limits {
		err := os.WriteFile(filepath.Join(dir, l.File), []byte(l.Value), 0)
		if err != nil && !(l.Optional && errors.Is(err, fs.ErrNotExist)) {
			return made, fmt.Errorf("cgroup: %s: %s %q: %w", dir, l.File, l.Value, err)
		}
	}
	return made, nil
}

// Remove removes the groups Make made, the deepest first; a group still
// in use (a process in it, a child group) stays, and so do those above.
func Remove(made []string) {
	for i := len(made) - 1; i >= 0; i-- {
		if unix.Rmdir(made[i]) != nil {
			return
		}
	}
}

// enable delegates the controllers to dir's children, writing to its
// cgroup.subtree_control only those it does not list yet (a write needs
// the controller in dir's own cgroup.controllers).
func enable(dir string, ctls []string) error {
	if len(ctls) == 0 {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return err
	}
	have := strings.Fields(string(b))
	for _, ctl := range ctls {
		if slices.Contains(have, ctl) {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+ctl), 0); err != nil {
			return fmt.Errorf("enable the %s controller in %s: %w", ctl, dir, err)
		}
	}
	return nil
}
