// Package testbin builds a command of this module for tests that need
// it as a program of its own (a helper process, a workload), in their
// TestMain.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// Main builds pkg (an import path) as a static binary named name in a
// temporary directory, runs the tests with its path, removes the
// directory, and exits with the tests' status; a failed build exits 1.
func Main(run func(path string) int, pkg, name string) {
	dir, err := os.MkdirTemp("", "testbin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	path := filepath.Join(dir, name)
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	build := exec.Command(goTool, "build", "-o", path, pkg)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	code := 1
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, out)
	} else {
		code = run(path)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}
