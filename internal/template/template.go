// Package template is the cache of VM templates: snapshots of a VM booted
// up to an agent waiting for its first container, which later VMs restore
// instead of booting (README "Templates"). It names the cache, keys its
// entries by their inputs and the identity of their files, and gets or
// builds an entry under a per-key lock; what a template holds and how it
// is built is its caller's (cmd/vessel's buildTemplate).
//
// The cache is root/KEY, a complete entry's snapshot root/KEY/snapshot
// (it has a vm.state). A build runs in root/KEY.build-* and is renamed
// into place when it succeeds; root/KEY.lock is the key's lock.
package template

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Snapshot is the name of the directory, in the directory a build is
// given, that the build writes the template's snapshot into.
const Snapshot = "snapshot"

// ErrBusy is the error of For when another process held the key's lock,
// building its template, for longer than For was allowed to wait.
var ErrBusy = errors.New("another vessel has been building this template")

// Root is the templates' cache directory: $VESSEL_TEMPLATE_DIR when set,
// else vessel/templates in the user's cache directory. For checks it
// before it uses it.
func Root() (string, error) {
	if d := os.Getenv("VESSEL_TEMPLATE_DIR"); d != "" {
		return d, nil
	}
	c, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("templates directory: %w", err)
	}
	return filepath.Join(c, "vessel", "templates"), nil
}

// Key names the cache entry of a template made from header (every input
// other than files that the restored VM depends on: versions, formats,
// the VM's size and configuration) and files (the executable, kernel and
// initramfs). A file counts by its path, size, modification time, inode
// and device, not its contents, so a rebuilt or replaced file gives
// another key. The key is the first 20 hex digits of the SHA-256 of
// header followed by a line "PATH SIZE MTIME-NS INODE DEVICE" per file.
func Key(header string, files ...string) (string, error) {
	h := sha256.New()
	h.Write([]byte(header))
	for _, p := range files {
		st, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		var ino, dev uint64
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			ino, dev = sys.Ino, sys.Dev
		}
		fmt.Fprintf(h, "%s %d %d %d %d\n", p, st.Size(), st.ModTime().UnixNano(), ino, dev)
	}
	return hex.EncodeToString(h.Sum(nil))[:20], nil
}

// For returns the snapshot directory of the template key in root (made
// 0700 if missing, refused if another user could write it), building it
// first if the cache has none. One build runs at a time per key, across
// processes: a caller finding another's build waits for it and uses its
// result, for at most lockWait (0: not at all), after which For fails
// with ErrBusy.
//
// build makes the template in dir, an empty directory of its own: its
// snapshot in dir/Snapshot, and whatever that refers to beside it. dir is
// renamed into the cache if build succeeds and removed if it fails; its
// error is For's, as it is. A build a killed process left is removed by
// the next build of the key.
func For(root, key string, lockWait time.Duration, build func(dir string) error) (string, error) {
	if err := checkKey(key); err != nil {
		return "", err
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", err
	}
	if err := privateDir(root); err != nil {
		return "", err
	}
	snap := filepath.Join(root, key, Snapshot)
	if complete(snap) {
		used(root, key)
		return snap, nil
	}
	if err := failedLately(root, key); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(root, key+".lock"), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := lockWithin(lock, lockWait); err != nil {
		return "", err
	}
	if complete(snap) {
		used(root, key)
		return snap, nil
	}
	if err := failedLately(root, key); err != nil {
		return "", err
	}
	// Builds of this key that a killed process left: nobody else can be
	// making one while we hold the lock.
	if stale, err := filepath.Glob(filepath.Join(root, key+".build-*")); err == nil {
		for _, d := range stale {
			os.RemoveAll(d)
		}
	}
	tmp, err := os.MkdirTemp(root, key+".build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := build(tmp); err != nil {
		markFailed(root, key, err)
		return "", err
	}
	os.Remove(filepath.Join(root, key+failedSuffix))
	final := filepath.Join(root, key)
	os.RemoveAll(final) // an unfinished entry a killed build left
	if err := os.Rename(tmp, final); err != nil {
		return "", err
	}
	return snap, nil
}

// FailureBackoff is how long after a failed build of a key, or a
// template of it that Reject turned down, For fails at once with
// ErrFailed instead of building it again: a build that fails for a
// reason of the host (no snapshot support in its KVM, a full disk) would
// otherwise cost every run its time before it boots.
var FailureBackoff = 10 * time.Minute

// ErrFailed is the error of For for a key whose build failed, or whose
// template was rejected, less than FailureBackoff ago.
var ErrFailed = errors.New("the template's last build failed")

// failedSuffix names a key's failure record beside its entry: the
// failure's message, its time the file's.
const failedSuffix = ".failed"

// markFailed records that key's build failed with err: its first line,
// the reason (a described VM follows it in the build's own report).
func markFailed(root, key string, err error) {
	why, _, _ := strings.Cut(err.Error(), "\n")
	os.WriteFile(filepath.Join(root, key+failedSuffix), []byte(why), 0o600)
}

// failedLately returns ErrFailed, with the failure's message, if key's
// last build failed less than FailureBackoff ago.
func failedLately(root, key string) error {
	p := filepath.Join(root, key+failedSuffix)
	st, err := os.Stat(p)
	if err != nil || time.Since(st.ModTime()) >= FailureBackoff {
		return nil
	}
	msg, _ := os.ReadFile(p)
	return fmt.Errorf("%w %v ago (%s); not tried again before %v have passed", ErrFailed,
		time.Since(st.ModTime()).Round(time.Second), strings.TrimSpace(string(msg)), FailureBackoff)
}

// used records that key's template was just used, for Prune.
func used(root, key string) {
	now := time.Now()
	os.Chtimes(filepath.Join(root, key), now, now)
}

// Reject drops the template whose snapshot directory is snap, as Drop
// does, because a VM restored from it failed where a booted one would
// not have (an agent that cannot configure a clone, say), and records
// why as a failed build: For does not build it again for
// FailureBackoff.
func Reject(snap string, why error) error {
	entry := filepath.Dir(snap)
	markFailed(filepath.Dir(entry), filepath.Base(entry), fmt.Errorf("rejected: %w", why))
	return Drop(snap)
}

// Prune removes the complete templates of root beyond the keep most
// recently used or built (For marks each use), and failure records
// older than FailureBackoff: a cache whose keys depend on what its users
// ask for (a VM size per memory limit) would otherwise grow without end.
// A VM restored from a removed template keeps its memory (the mapping
// holds the file), and a process about to restore it boots instead.
func Prune(root string, keep int) error {
	ents, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	type entry struct {
		path string
		at   time.Time
	}
	var all []entry
	for _, e := range ents {
		p := filepath.Join(root, e.Name())
		if strings.HasSuffix(e.Name(), failedSuffix) {
			if st, err := os.Stat(p); err == nil && time.Since(st.ModTime()) >= FailureBackoff {
				os.Remove(p)
			}
			continue
		}
		if !e.IsDir() || strings.Contains(e.Name(), ".") || !complete(filepath.Join(p, Snapshot)) {
			continue
		}
		if st, err := os.Stat(p); err == nil {
			all = append(all, entry{p, st.ModTime()})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].at.After(all[j].at) })
	for i := keep; i < len(all); i++ {
		if err := os.RemoveAll(all[i].path); err != nil {
			return err
		}
	}
	return nil
}

// Drop removes the template whose snapshot directory (from For) is snap,
// one that could not be restored; the next For of its key builds it
// again.
func Drop(snap string) error {
	return os.RemoveAll(filepath.Dir(snap))
}

// complete tells whether snap is a finished snapshot.
func complete(snap string) bool {
	_, err := os.Stat(filepath.Join(snap, "vm.state"))
	return err == nil
}

// checkKey refuses a key that is not one plain file name (Key's are hex
// digits): it names paths in root and a glob pattern.
func checkKey(key string) error {
	if key == "" {
		return errors.New("template: empty key")
	}
	for _, c := range key {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("template: invalid key %q", key)
		}
	}
	return nil
}

// lockWithin takes f's exclusive lock, waiting at most d for it; past d
// it fails with ErrBusy.
func lockWithin(f *os.File, d time.Duration) error {
	for deadline := time.Now().Add(d); ; time.Sleep(100 * time.Millisecond) {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		if time.Now().After(deadline) {
			if d <= 0 {
				return ErrBusy
			}
			return fmt.Errorf("%w for over %v", ErrBusy, d)
		}
	}
}

// privateDir refuses a templates directory another user could write,
// or replace: a template planted there would run every container in the
// planter's guest kernel. The directory must be this user's and closed to
// others, and each directory above it must be root's or this user's and,
// if others may write it, sticky (as /tmp), so that nobody else can
// rename a directory on the path and put their own in its place.
func privateDir(dir string) error {
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	switch {
	case !st.IsDir():
		return fmt.Errorf("%s is not a directory", dir)
	case !ok || int(sys.Uid) != os.Geteuid():
		return fmt.Errorf("%s is not owned by this user", dir)
	case st.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%s has mode %#o, writable by other users", dir, st.Mode().Perm())
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for d := filepath.Dir(abs); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		switch {
		case !ok || sys.Uid != 0 && int(sys.Uid) != os.Geteuid():
			return fmt.Errorf("%s: %s above it is another user's", dir, d)
		case st.Mode().Perm()&0o022 != 0 && st.Mode()&os.ModeSticky == 0:
			return fmt.Errorf("%s: %s above it has mode %#o, writable by other users and not sticky", dir, d, st.Mode().Perm())
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}
