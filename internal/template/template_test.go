package template

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestRoot: $VESSEL_TEMPLATE_DIR wins; otherwise the user cache
// directory's vessel/templates.
func TestRoot(t *testing.T) {
	t.Setenv("VESSEL_TEMPLATE_DIR", "/some/where")
	if got, err := Root(); err != nil || got != "/some/where" {
		t.Errorf("with VESSEL_TEMPLATE_DIR: %q, %v", got, err)
	}
	t.Setenv("VESSEL_TEMPLATE_DIR", "")
	t.Setenv("XDG_CACHE_HOME", "/cache")
	if got, err := Root(); err != nil || got != "/cache/vessel/templates" {
		t.Errorf("without: %q, %v", got, err)
	}
}

// Key is the first 20 hex digits of the SHA-256 of the header and a line
// per file: these bytes are the cache's names, which must not change.
func TestKey(t *testing.T) {
	if k, err := Key("vessel v1 template 1\n"); err != nil || k != "5b2576e1602ebfe4e29e" {
		t.Errorf("Key without files: %s, %v", k, err)
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	mtime := time.Unix(1700000000, 123456789)
	for i, p := range []string{a, b} {
		if err := os.WriteFile(p, make([]byte, 3+i), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, mtime, mtime)
	}
	want := "header\n"
	for _, p := range []string{a, b} {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		want += fmt.Sprintf("%s %d 1700000000123456789 %d %d\n", p, st.Size, st.Ino, st.Dev)
	}
	sum := sha256.Sum256([]byte(want))
	k0, err := Key("header\n", a, b)
	if err != nil || k0 != hex.EncodeToString(sum[:])[:20] {
		t.Errorf("Key: %s, %v; want the hash of\n%s", k0, err, want)
	}

	// Any input changes it: the header, the files' order, a file's
	// time, a file replaced by another of the same size and time.
	changed := func(what string, header string, files ...string) {
		t.Helper()
		if k, err := Key(header, files...); err != nil || k == k0 {
			t.Errorf("%s: %s, %v", what, k, err)
		}
	}
	changed("header", "header 2\n", a, b)
	changed("order", "header\n", b, a)
	os.Chtimes(a, mtime, mtime.Add(time.Nanosecond))
	changed("mtime", "header\n", a, b)
	os.Chtimes(a, mtime, mtime)
	if err := os.Rename(a, a+".old"); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(a, make([]byte, 3), 0o644)
	os.Chtimes(a, mtime, mtime)
	changed("inode", "header\n", a, b)

	if _, err := Key("header\n", filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
}

// A templates directory others can write, or a symbolic link, is
// refused, and For then neither builds nor writes there.
func TestPrivateDir(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.Mkdir(good, 0o700)
	groupW := filepath.Join(dir, "group")
	os.Mkdir(groupW, 0o700)
	os.Chmod(groupW, 0o770)
	open := filepath.Join(dir, "open")
	os.Mkdir(open, 0o700)
	os.Chmod(open, 0o777)
	link := filepath.Join(dir, "link")
	os.Symlink(good, link)
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if err := privateDir(good); err != nil {
		t.Errorf("private directory refused: %v", err)
	}
	for _, d := range []string{groupW, open, link, file, filepath.Join(dir, "missing")} {
		if err := privateDir(d); err == nil {
			t.Errorf("%s accepted", d)
		}
	}
	if os.Geteuid() != 0 {
		if err := privateDir("/"); err == nil || !strings.Contains(err.Error(), "not owned") {
			t.Errorf("a directory of another user: %v", err)
		}
	}
	for _, d := range []string{groupW, open, link, file} {
		_, err := For(d, "k", 0, func(string) error {
			t.Errorf("%s: built", d)
			return nil
		})
		if err == nil {
			t.Errorf("For used %s", d)
		}
	}
	for _, d := range []string{groupW, open} {
		if ents, _ := os.ReadDir(d); len(ents) != 0 {
			t.Errorf("For wrote into %s: %v", d, ents)
		}
	}
}

// build is a build that makes a complete template and counts its runs.
func build(n *atomic.Int32, wait time.Duration) func(string) error {
	return func(dir string) error {
		n.Add(1)
		time.Sleep(wait)
		if err := os.Mkdir(filepath.Join(dir, Snapshot), 0o700); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, Snapshot, "vm.state"), []byte("state"), 0o600)
	}
}

// For builds a key's template once and returns the cache's copy after:
// the build's directory renamed into place, made 0700.
func TestFor(t *testing.T) {
	root := filepath.Join(t.TempDir(), "cache", "templates")
	var n atomic.Int32
	for i := 0; i < 2; i++ {
		snap, err := For(root, "k1", 0, build(&n, 0))
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(root, "k1", Snapshot); snap != want {
			t.Errorf("For: %s, want %s", snap, want)
		}
		if b, err := os.ReadFile(filepath.Join(snap, "vm.state")); err != nil || string(b) != "state" {
			t.Errorf("the template's state: %q, %v", b, err)
		}
	}
	if n.Load() != 1 {
		t.Errorf("%d builds, want 1", n.Load())
	}
	if st, err := os.Stat(root); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("the cache: %v, %v", st.Mode(), err)
	}
	assertEntries(t, root, "k1", "k1.lock")

	// Another key is another template.
	if _, err := For(root, "k2", 0, build(&n, 0)); err != nil || n.Load() != 2 {
		t.Errorf("another key: %v, %d builds", err, n.Load())
	}

	// Drop removes the template; the next For builds it again.
	snap := filepath.Join(root, "k1", Snapshot)
	if err := Drop(snap); err != nil {
		t.Fatal(err)
	}
	assertEntries(t, root, "k1.lock", "k2", "k2.lock")
	if got, err := For(root, "k1", 0, build(&n, 0)); err != nil || got != snap || n.Load() != 3 {
		t.Errorf("after Drop: %s, %v, %d builds", got, err, n.Load())
	}

	for _, key := range []string{"", "..", "a/b", "k*", "../k"} {
		if _, err := For(root, key, 0, build(&n, 0)); err == nil {
			t.Errorf("key %q accepted", key)
		}
	}
}

// A build that fails leaves nothing and its error is For's as it is;
// what a killed build left (a build directory, an entry without a
// state) is removed by the next build.
func TestForFailedBuild(t *testing.T) {
	root := t.TempDir()
	boom := errors.New("the template VM ended: boom")
	var dir string
	_, err := For(root, "k", 0, func(d string) error {
		dir = d
		if !strings.HasPrefix(filepath.Base(d), "k.build-") || filepath.Dir(d) != root {
			t.Errorf("the build's directory: %s", d)
		}
		os.WriteFile(filepath.Join(d, "image-slot"), nil, 0o600)
		return boom
	})
	if err != boom {
		t.Errorf("a failed build: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the failed build's directory: %v", err)
	}
	assertEntries(t, root, "k.failed", "k.lock")
	// The failure is remembered: no build for FailureBackoff.
	var none atomic.Int32
	if _, err := For(root, "k", 0, build(&none, 0)); !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "boom") || none.Load() != 0 {
		t.Errorf("right after a failed build: %v, %d builds; want ErrFailed with its reason, none", err, none.Load())
	}
	old := time.Now().Add(-FailureBackoff - time.Second)
	os.Chtimes(filepath.Join(root, "k.failed"), old, old)

	os.MkdirAll(filepath.Join(root, "k.build-123", Snapshot), 0o700)
	os.MkdirAll(filepath.Join(root, "k", Snapshot), 0o700) // no vm.state
	os.WriteFile(filepath.Join(root, "k", "leftover"), nil, 0o600)
	os.MkdirAll(filepath.Join(root, "other.build-1"), 0o700)
	var n atomic.Int32
	if _, err := For(root, "k", 0, build(&n, 0)); err != nil || n.Load() != 1 {
		t.Fatalf("after a killed build: %v, %d builds", err, n.Load())
	}
	assertEntries(t, root, "k", "k.lock", "other.build-1")
	if _, err := os.Stat(filepath.Join(root, "k", "leftover")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the unfinished entry was kept: %v", err)
	}
}

// A process that holds a key's lock for longer than For may wait makes
// For fail with ErrBusy, at once with no wait; one that finishes its
// build in time has its template used.
func TestForBusy(t *testing.T) {
	root := t.TempDir()
	var n atomic.Int32
	if _, err := For(root, "k", 0, func(string) error { return errors.New("make the lock file") }); err == nil {
		t.Fatal("a failed build succeeded")
	}
	os.Remove(filepath.Join(root, "k.failed"))
	held, err := os.OpenFile(filepath.Join(root, "k.lock"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := unix.Flock(int(held.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	_, err = For(root, "k", 0, build(&n, 0))
	if !errors.Is(err, ErrBusy) || time.Since(start) > time.Second {
		t.Errorf("no wait: %v after %v, want ErrBusy at once", err, time.Since(start))
	}
	_, err = For(root, "k", 300*time.Millisecond, build(&n, 0))
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "building this template for over 300ms") {
		t.Errorf("a 300ms wait: %v", err)
	}
	if n.Load() != 0 {
		t.Errorf("%d builds under another's lock", n.Load())
	}

	// The holder finishes its build while For waits.
	go func() {
		time.Sleep(200 * time.Millisecond)
		build(&n, 0)(filepath.Join(root, "k"))
		held.Close()
	}()
	os.Mkdir(filepath.Join(root, "k"), 0o700)
	snap, err := For(root, "k", 10*time.Second, func(string) error {
		t.Error("built again after the holder's build")
		return nil
	})
	if err != nil || snap != filepath.Join(root, "k", Snapshot) {
		t.Errorf("after the holder's build: %s, %v", snap, err)
	}
}

// Concurrent For calls of one key build it once.
func TestForConcurrent(t *testing.T) {
	root := t.TempDir()
	var n atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := For(root, "k", 30*time.Second, build(&n, 200*time.Millisecond))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n.Load() != 1 {
		t.Errorf("%d builds, want 1", n.Load())
	}
}

// assertEntries checks that dir holds exactly names.
func assertEntries(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, " ") != strings.Join(names, " ") {
		t.Errorf("%s holds %v, want %v", dir, got, names)
	}
}

// TestPrivateDirAncestors: a directory above the cache that another user
// could rename entries of is refused; a sticky one (as /tmp) is not.
func TestPrivateDirAncestors(t *testing.T) {
	base := t.TempDir()
	for _, tc := range []struct {
		mode os.FileMode
		ok   bool
	}{{0o755, true}, {0o777, false}, {0o777 | os.ModeSticky, true}, {0o775, false}} {
		up := filepath.Join(base, fmt.Sprintf("up%o", uint32(tc.mode)))
		dir := filepath.Join(up, "templates")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(up, tc.mode); err != nil {
			t.Fatal(err)
		}
		if err := privateDir(dir); (err == nil) != tc.ok {
			t.Errorf("below a directory of mode %v: %v, want ok %v", tc.mode, err, tc.ok)
		}
	}
}

// TestReject: a rejected template is gone and not built again for
// FailureBackoff.
func TestReject(t *testing.T) {
	root := t.TempDir()
	var n atomic.Int32
	snap, err := For(root, "k", 0, build(&n, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := Reject(snap, errors.New("the agent ignored the network")); err != nil {
		t.Fatal(err)
	}
	if _, err := For(root, "k", 0, build(&n, 0)); !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "ignored the network") || n.Load() != 1 {
		t.Errorf("after a rejection: %v, %d builds; want ErrFailed and no new build", err, n.Load())
	}
	assertEntries(t, root, "k.failed", "k.lock")
}

// TestPrune: the most recently used templates stay, the others and old
// failure records go, builds in progress are left alone.
func TestPrune(t *testing.T) {
	root := t.TempDir()
	var n atomic.Int32
	now := time.Now()
	for i, k := range []string{"a", "b", "c"} {
		if _, err := For(root, k, 0, build(&n, 0)); err != nil {
			t.Fatal(err)
		}
		at := now.Add(time.Duration(i-10) * time.Minute)
		os.Chtimes(filepath.Join(root, k), at, at)
	}
	// a is used again: the most recent.
	if _, err := For(root, "a", 0, build(&n, 0)); err != nil || n.Load() != 3 {
		t.Fatalf("a hit: %v, %d builds", err, n.Load())
	}
	os.MkdirAll(filepath.Join(root, "d.build-1"), 0o700)
	os.WriteFile(filepath.Join(root, "e.failed"), nil, 0o600)
	old := now.Add(-FailureBackoff - time.Minute)
	os.Chtimes(filepath.Join(root, "e.failed"), old, old)
	os.WriteFile(filepath.Join(root, "f.failed"), nil, 0o600)
	if err := Prune(root, 2); err != nil {
		t.Fatal(err)
	}
	assertEntries(t, root, "a", "a.lock", "b.lock", "c", "c.lock", "d.build-1", "f.failed")
}

// TestBuildProcess: a failed build's output is its error, each line made
// printable on its own and without the program's name; a build past its
// limit is stopped.
func TestBuildProcess(t *testing.T) {
	for _, tc := range []struct {
		name, script string
		limit        time.Duration
		want         string
	}{
		{"ok", "exit 0", time.Minute, ""},
		{"one line", `echo "sh: no kernel" >&2; exit 1`, time.Minute, "no kernel"},
		{"a description", `printf 'sh: the agent did not come up\nthe VM:\n    vCPU 0: \033[31mhalted\n'; exit 1`, time.Minute,
			"the agent did not come up\nthe VM:\n    vCPU 0: \\u001b[31mhalted"},
		{"silent", "exit 3", time.Minute, "template build: exit status 3"},
		{"hung", "exec sleep 20", 200 * time.Millisecond, "the template build took over 200ms: stopped"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := BuildProcess("/bin/sh", []string{"-c", tc.script}, nil, nil, tc.limit)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("BuildProcess = %q, want %q", got, tc.want)
			}
		})
	}
}
