package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// plantState writes a state.json for a container id under root, as
// another user (or a bug) could, naming scratch as its scratch disk.
func plantState(t *testing.T, root, id, scratch string) {
	t.Helper()
	dir := filepath.Join(root, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]any{"id": id, "name": "planted", "image": "busybox", "created": time.Now(),
		"status": "exited", "scratch": scratch})
	if err := os.WriteFile(filepath.Join(dir, "state.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "log.json"), nil, 0o600)
}

// TestPlantedStateRefused: the container commands refuse a state root
// another user could write to, and rm never deletes a file outside the
// container's own state and scratch disk whatever its state says.
func TestPlantedStateRefused(t *testing.T) {
	id := strings.Repeat("f", 64)
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, vesselDir string) // makes $XDG_RUNTIME_DIR/vessel
		open  bool                                 // the state root itself is sound
	}{
		{"world-writable", func(t *testing.T, d string) {
			os.Mkdir(d, 0o777)
			os.Chmod(d, 0o777)
		}, false},
		{"symlink", func(t *testing.T, d string) {
			target := t.TempDir()
			os.Chmod(target, 0o700)
			os.Symlink(target, d)
		}, false},
		{"another user's", func(t *testing.T, d string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to give a directory to another user")
			}
			os.Mkdir(d, 0o700)
			os.Chown(d, 4242, 4242)
		}, false},
		{"sound root, scratch outside", func(t *testing.T, d string) { os.Mkdir(d, 0o700) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("XDG_DATA_HOME", t.TempDir())
			runtime := t.TempDir()
			t.Setenv("XDG_RUNTIME_DIR", runtime)
			victim := filepath.Join(t.TempDir(), "precious")
			if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
			tc.plant(t, filepath.Join(runtime, "vessel"))
			plantState(t, filepath.Join(runtime, "vessel", "containers"), id, victim)
			for _, args := range [][]string{{"ps", "-a"}, {"logs", id}, {"rm", id}, {"rm", "-f", "planted"}} {
				want := exitContainer
				if tc.open && args[0] != "rm" {
					want = 0
				}
				if code := run(args); code != want {
					t.Errorf("vessel %v: exit %d, want %d", args, code, want)
				}
			}
			if _, err := os.Stat(victim); err != nil {
				t.Errorf("vessel rm deleted %s, which a planted state named: %v", victim, err)
			}
		})
	}
}

// TestPsShortID: a state with an ID shorter than ps's short IDs is not
// vessel's: ps does not list it (it used to panic).
func TestPsShortID(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	runtime := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", runtime)
	root := filepath.Join(runtime, "vessel", "containers")
	os.MkdirAll(root, 0o700)
	plantState(t, root, "abc", "")
	for _, args := range [][]string{{"ps", "-a"}, {"ps", "-a", "-q"}} {
		if code := run(args); code != 0 {
			t.Errorf("vessel %v: exit %d, want 0", args, code)
		}
	}
}
