package main

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"
)

// newBench is `vessel bench`: it runs vessel-bench, installed beside
// vessel (make builds both into bin/), which keeps the experiments'
// libraries out of the VMM's binary.
func newBench() *cobra.Command {
	return &cobra.Command{
		Use:                "bench compare [flags]",
		Short:              "Run experiments: compare the host, runc and vessel on the same workloads",
		DisableFlagParsing: true,
		RunE: func(_ *cobra.Command, args []string) error {
			exe, err := os.Executable()
			if err != nil {
				return &exitError{code: exitInternal, msg: err.Error()}
			}
			bin := filepath.Join(filepath.Dir(exe), "vessel-bench")
			if _, err := os.Stat(bin); err != nil {
				return &exitError{code: exitInternal, msg: "no vessel-bench beside " + exe + ": build it with make"}
			}
			err = syscall.Exec(bin, append([]string{"vessel-bench"}, args...), os.Environ())
			return &exitError{code: exitInternal, msg: "run " + bin + ": " + err.Error()}
		},
	}
}

// gitVersion is `git describe` of the checkout, set by make.
var gitVersion string

// version names the build: git describe of the checkout it was built
// from, else the module version and VCS revision Go recorded.
func version() string {
	if gitVersion != "" {
		return gitVersion
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = ", modified"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" {
		v += " (" + rev + modified + ")"
	}
	return v
}
