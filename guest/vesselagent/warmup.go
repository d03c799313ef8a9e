package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// warmUpID is the throwaway container's ID; a host's IDs are hex or
// names the host checked, and the agent refuses a second container of
// one ID anyway.
const warmUpID = "vessel-template-warm-up"

// warmUpDir holds the throwaway container's bundle while it runs.
var warmUpDir = stateDir

// warmUp runs one throwaway container through runc (run, then delete)
// in a VM about to become a template, with the configuration the host
// gives for it (a real container's, running /bin/true), and returns the
// PID of the runc that ran it. The kernel's and runc's paths for a container
// are then set up in the memory the template's clones share and
// restore from: a clone's first container is created as fast as a VM's
// second, where it used to pay the first one's cost (on the nested test
// platform, runc create took 1.6 s for a VM's first container against
// 0.6-0.7 s for the next ones).
//
// Its root is the overlay a vessel run container gets (mountOverlay),
// of an empty lower directory and a tmpfs, with the agent's own binary
// (the u-root busybox, which runs "true" by the name it is called by)
// bound read-only at /bin/true. Nothing of it is left behind (delete).
func warmUp(ctx context.Context, spec specs.Spec) (pid int, err error) {
	if spec.Process == nil {
		return 0, errors.New("warm-up: no process")
	}
	// go-runc runs "runc" from PATH: a guest without it fails here,
	// before anything is made.
	if _, err := exec.LookPath("runc"); err != nil {
		return 0, fmt.Errorf("warm-up: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("warm-up: %w", err)
	}
	if err := os.MkdirAll(warmUpDir, 0o700); err != nil {
		return 0, fmt.Errorf("warm-up: %w", err)
	}
	dir, err := os.MkdirTemp(warmUpDir, ".warm-up-")
	if err != nil {
		return 0, fmt.Errorf("warm-up: %w", err)
	}
	c := &container{id: warmUpID, dir: dir, runc: &runc.Runc{Log: filepath.Join(dir, "runc.log"), LogFormat: runc.JSON}}
	defer c.delete(ctx) // the mounts, then dir
	lower := filepath.Join(dir, "lower")
	if err := os.Mkdir(lower, 0o755); err != nil {
		return 0, fmt.Errorf("warm-up: %w", err)
	}
	rootfs, err := c.mountOverlay(lower, "tmpfs", "tmpfs", "mode=0755")
	if err != nil {
		return 0, fmt.Errorf("warm-up: %w", err)
	}
	proc := *spec.Process
	proc.Args, proc.Terminal, proc.ConsoleSize = []string{"/bin/true"}, false, nil
	proc.User = specs.User{}
	proc.Cwd = "/"
	spec.Process = &proc
	spec.Root = &specs.Root{Path: rootfs}
	trimArches(&spec, foreignArches())
	spec.Mounts = append(append([]specs.Mount(nil), spec.Mounts...),
		specs.Mount{Destination: "/bin/true", Type: "bind", Source: self, Options: []string{"bind", "ro"}})
	bundle := filepath.Join(dir, "bundle")
	b, err := json.Marshal(&spec)
	if err == nil {
		err = os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600)
	}
	if err != nil {
		return 0, fmt.Errorf("warm-up: %w", err)
	}
	io, err := runc.NewNullIO()
	if err != nil {
		return 0, fmt.Errorf("warm-up: %w", err)
	}
	defer io.Close()
	started := make(chan int, 1)
	_, err = c.runc.Run(ctx, warmUpID, bundle, &runc.CreateOpts{IO: io, NoPivot: true, Started: started})
	// Whatever runc left (its state, the cgroup) goes, even after a
	// failure.
	c.runc.Delete(ctx, warmUpID, &runc.DeleteOpts{Force: true})
	if err != nil {
		if msg := lastRuncError(c.runc.Log); msg != "" {
			return 0, fmt.Errorf("warm-up: runc run: %s", msg)
		}
		// A non-zero exit of /bin/true included.
		return 0, fmt.Errorf("warm-up: runc run: %w", err)
	}
	// Run sent runc's PID and closed the channel.
	pid = <-started
	if pid <= 0 {
		return 0, errors.New("warm-up: runc run reported no process")
	}
	return pid, nil
}
