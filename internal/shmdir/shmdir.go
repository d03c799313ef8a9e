// Package shmdir gives tests a scratch directory in memory: fuzz targets
// that touch files run tens of thousands of inputs, and on a disk their
// file system calls (directories made and removed, fsyncs) take most of
// the time.
package shmdir

import (
	"os"
	"testing"
)

// Dir returns a new directory in /dev/shm, removed when tb's test ends,
// or tb.TempDir() where /dev/shm is missing or not writable.
func Dir(tb testing.TB) string {
	tb.Helper()
	d, err := os.MkdirTemp("/dev/shm", "vessel-test-")
	if err != nil {
		return tb.TempDir()
	}
	tb.Cleanup(func() { os.RemoveAll(d) })
	return d
}
