package container

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestMakeScratch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "scratch.ext4")
	if err := MakeScratch(path, 40<<20+1); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 41<<20 {
		t.Errorf("size %d, want 41 MiB", st.Size())
	}
	// An ext4 file system: its superblock's magic at 1024+56.
	b, _ := os.ReadFile(path)
	if len(b) < 1082 || b[1080] != 0x53 || b[1081] != 0xEF {
		t.Error("no ext4 superblock")
	}
	if fsck, err := exec.LookPath("e2fsck"); err == nil {
		if out, err := exec.Command(fsck, "-n", "-f", path).CombinedOutput(); err != nil {
			t.Errorf("e2fsck: %v\n%s", err, out)
		}
	}
	// It exists already: refused, and left alone.
	if err := MakeScratch(path, 40<<20); err == nil {
		t.Error("made over an existing file")
	}
	if _, err := os.Stat(path); err != nil {
		t.Error("the existing file was removed")
	}
	if err := MakeScratch(filepath.Join(dir, "small"), 1<<20); err == nil || !strings.Contains(err.Error(), "at least") {
		t.Errorf("1 MiB: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "small")); !os.IsNotExist(err) {
		t.Error("a refused disk left a file")
	}
}
