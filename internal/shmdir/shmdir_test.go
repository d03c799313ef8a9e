package shmdir

import (
	"os"
	"path/filepath"
	"testing"
)

// TestDir: a writable directory, gone once the test that asked for it ends.
func TestDir(t *testing.T) {
	var dir string
	t.Run("use", func(t *testing.T) {
		dir = Dir(t)
		if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s after its test ended: %v, want it removed", dir, err)
	}
}
