package main

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPodMemberSwapped: the guest may rename things in the pod share
// whenever it is writable (any other member's attach or removal). A
// guest that, in such a window, renames member B's directory away and
// member A's (which holds a read-write host volume) to B's name must not
// make B's removal touch A: not unmount A's trees, not delete A's host
// volume's files (found by the session 9 review: detach and RemoveAll
// by path did both). B's own trees are unmounted, A's still work.
func TestPodMemberSwapped(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	runtime.LockOSThread() // never unlocked: the thread ends with the test
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	vol := filepath.Join(dir, "volume") // a host directory, -v vol:/data
	for _, d := range []string{"rootA", "rootB", "volume", "state"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	precious := filepath.Join(vol, "precious")
	if err := os.WriteFile(precious, []byte("the host's data"), 0o644); err != nil {
		t.Fatal(err)
	}
	share, err := podShare(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(share, unix.MNT_DETACH)
	ps := &podState{share: share, members: map[string]*member{}}
	open := func(p string) *os.File {
		f, err := openTree(p, false)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	mdA, err := ps.attach("A", []memberTree{{Name: "root"}, {Name: "b0"}}, []*os.File{open(filepath.Join(dir, "rootA")), open(vol)})
	if err != nil {
		t.Fatal(err)
	}
	mdB, err := ps.attach("B", []memberTree{{Name: "root"}}, []*os.File{open(filepath.Join(dir, "rootB"))})
	if err != nil {
		t.Fatal(err)
	}
	// The guest, in a write window (simulated: the share remounted
	// read-write as attach and removeMember do).
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := unix.Mount("", share, "", unix.MS_REMOUNT|flags, ""); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(share, "B"), filepath.Join(share, "away")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(share, "A"), filepath.Join(share, "B")); err != nil {
		t.Fatalf("rename of a directory holding mount points: %v", err)
	}
	unix.Mount("", share, "", unix.MS_REMOUNT|unix.MS_RDONLY|flags, "")
	// B stops: memberCreate's teardown.
	ps.removeMember(mdB)
	if _, err := os.Stat(precious); err != nil {
		t.Errorf("B's teardown deleted member A's host volume's file %s: %v", precious, err)
	}
	// A's volume is still attached, under its new name.
	if _, err := os.Stat(filepath.Join(share, "B", "b0", "precious")); err != nil {
		t.Errorf("B's teardown detached member A's volume: %v", err)
	}
	// B's own root was unmounted and its mount point removed, through
	// its directory (which, renamed, stays in the tmpfs, empty).
	if ents, err := os.ReadDir(filepath.Join(share, "away")); err != nil || len(ents) != 0 {
		t.Errorf("B's directory after its teardown holds %v (%v); want it emptied", ents, err)
	}
	ps.removeMember(mdA)
	if _, err := os.Stat(precious); err != nil {
		t.Errorf("A's teardown deleted its host volume's file %s: %v", precious, err)
	}
}
