//go:build linux

package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeHierarchy is a directory tree shaped as a cgroup v2 hierarchy's
// files: each group in dirs (relative, "" the root) has an empty
// cgroup.subtree_control.
func fakeHierarchy(t *testing.T, dirs ...string) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, d, "cgroup.subtree_control"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// TestMake: the group and its missing ancestors are made, each ancestor
// delegates the limits' controllers once, the limits are written, and a
// path that is not below the root is refused.
func TestMake(t *testing.T) {
	root := fakeHierarchy(t, "", "a")
	// The fake hierarchy's new groups get no interface files; make the
	// one the test creates look like a group as it is made.
	if err := os.WriteFile(filepath.Join(root, "a", "cgroup.subtree_control"), []byte("cpu\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "a", "b", "cgroup.subtree_control"), nil, 0o644)
	dir := filepath.Join(root, "a", "b", "c")
	made, err := Make(root, dir, []Limit{
		{File: "memory.max", Value: "1000"},
		{File: "cpu.max", Value: "200000 100000"},
		{File: "memory.swap.max", Value: "0"},
	})
	if err != nil || len(made) != 1 || made[0] != dir {
		t.Fatalf("Make = %v, %v; want %s made", made, err, dir)
	}
	for file, want := range map[string]string{
		"cgroup.subtree_control":     "+cpu",    // the last controller written
		"a/cgroup.subtree_control":   "+memory", // cpu was delegated already
		"a/b/cgroup.subtree_control": "+cpu",
		"a/b/c/memory.max":           "1000",
		"a/b/c/cpu.max":              "200000 100000",
		"a/b/c/memory.swap.max":      "0",
	} {
		if b, err := os.ReadFile(filepath.Join(root, file)); err != nil || string(b) != want {
			t.Errorf("%s: %q, %v; want %q", file, b, err, want)
		}
	}
	// It exists now: taken, not made.
	if made, err := Make(root, dir, nil); err != nil || len(made) != 0 {
		t.Errorf("Make of an existing group = %v, %v; want taken", made, err)
	}
	// A group with groups below it is not taken (session 9 review, F12:
	// limits written to system.slice bound every service).
	if _, err := Make(root, filepath.Join(root, "a"), []Limit{{File: "memory.max", Value: "1"}}); !errors.Is(err, ErrHasChildren) {
		t.Errorf("Make of a group with children: %v, want ErrHasChildren", err)
	}
	if _, err := os.Stat(filepath.Join(root, "a", "memory.max")); err == nil {
		t.Error("a limit was written to a group with children")
	}
	for _, bad := range []string{root, filepath.Dir(root), filepath.Join(root, "..", "x"), "a/b"} {
		if _, err := Make(root, bad, nil); err == nil || !strings.Contains(err.Error(), "not below") {
			t.Errorf("Make(%q): %v; want refused as not below the root", bad, err)
		}
	}
}

// TestMakeLimitFails: the groups Make made are removed when a limit
// cannot be written; an optional limit the kernel lacks is skipped; Remove
// removes what Make made, the deepest first.
func TestMakeLimitFails(t *testing.T) {
	root := fakeHierarchy(t, "")
	dir := filepath.Join(root, "g")
	if _, err := Make(root, dir, []Limit{{File: "x/memory.max", Value: "1"}}); err == nil {
		t.Fatal("Make with an unwritable limit succeeded")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the group made is left after a failed limit: %v", err)
	}
	made, err := Make(root, dir, []Limit{{File: "y/memory.swap.max", Value: "0", Optional: true}})
	if err != nil || len(made) != 1 {
		t.Fatalf("Make with a missing optional limit = %v, %v; want made", made, err)
	}
	Remove(made)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("Remove left %s: %v", dir, err)
	}
}
