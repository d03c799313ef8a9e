// Package atomicfile replaces a file's contents so that a reader sees
// the old file or the new one whole, never a part: the new contents go
// to a temporary file of its own in the same directory, renamed over
// the name. Two processes writing one name at once each rename a whole
// file of their own; the last rename wins.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// TempPrefix is how the names of Write's temporary files for name
// begin (in name's directory): a file of that prefix is left only by a
// writer that was killed, and may be removed.
func TempPrefix(name string) string { return "." + filepath.Base(name) + "-" }

// Write replaces name with b, with mode perm. With durable, the file
// and its directory are synced before Write returns, so that a crash
// of the machine leaves the old file or the new one too.
func Write(name string, b []byte, perm os.FileMode, durable bool) error {
	dir := filepath.Dir(name)
	tmp, err := os.CreateTemp(dir, TempPrefix(name))
	if err != nil {
		return err
	}
	renamed := false
	defer func() {
		tmp.Close()
		if !renamed {
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(b); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("chmod %s: %w", name, err)
	}
	if durable {
		if err := tmp.Sync(); err != nil {
			return fmt.Errorf("sync %s: %w", name, err)
		}
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return err
	}
	// Once renamed, the temporary name is free: another writer's
	// CreateTemp may take it, and it must not be removed.
	renamed = true
	if !durable {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
