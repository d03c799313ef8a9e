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
	"golang.org/x/sys/unix"
)

// warmUpID is the throwaway container's ID; a host's IDs are hex or
// names the host checked, and the agent refuses a second container of
// one ID anyway.
const warmUpID = "vessel-template-warm-up"

// warmUpDir holds the throwaway container's bundle while it runs.
var warmUpDir = stateDir

// warmUp runs one throwaway container through runc (run, then delete)
// in a VM about to become a template, with the configuration the host
// gives for it (a real container's, running /bin/true). The kernel's
// and runc's paths for a container are then set up in the memory the
// template's clones share and restore from: a clone's first container
// is created as fast as a VM's second, where it used to pay the first
// one's cost (on the nested test platform, runc create took 1.6 s for
// a VM's first container against 0.6-0.7 s for the next ones).
//
// Its root is an empty directory under a tmpfs's overlay, as a vessel
// run container's writable layer is, with the agent's own binary (the
// u-root busybox, which runs "true" by the name it is called by) bound
// read-only at /bin/true. Nothing of it is left behind.
func warmUp(ctx context.Context, spec specs.Spec) (err error) {
	if spec.Process == nil {
		return errors.New("warm-up: no process")
	}
	// go-runc runs "runc" from PATH: a guest without it fails here,
	// before anything is made.
	if _, err := exec.LookPath("runc"); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	if err := os.MkdirAll(warmUpDir, 0o700); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	dir, err := os.MkdirTemp(warmUpDir, ".warm-up-")
	if err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	defer func() {
		// The overlay, then the tmpfs under it (mountRootfs's order
		// reversed); RemoveAll then finds plain directories only.
		unix.Unmount(filepath.Join(dir, "rootfs"), unix.MNT_DETACH)
		unix.Unmount(filepath.Join(dir, "rw"), unix.MNT_DETACH)
		os.RemoveAll(dir)
	}()
	rootfs, err := warmUpRootfs(dir)
	if err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	proc := *spec.Process
	proc.Args, proc.Terminal, proc.ConsoleSize = []string{"/bin/true"}, false, nil
	proc.User = specs.User{}
	proc.Cwd = "/"
	spec.Process = &proc
	spec.Root = &specs.Root{Path: rootfs}
	spec.Mounts = append(append([]specs.Mount(nil), spec.Mounts...),
		specs.Mount{Destination: "/bin/true", Type: "bind", Source: self, Options: []string{"bind", "ro"}})
	b, err := json.Marshal(&spec)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600)
	}
	if err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	r := &runc.Runc{Log: filepath.Join(dir, "runc.log"), LogFormat: runc.JSON}
	io, err := runc.NewNullIO()
	if err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	defer io.Close()
	_, err = r.Run(ctx, warmUpID, dir, &runc.CreateOpts{IO: io, NoPivot: true})
	// Whatever runc left (its state, the cgroup) goes, even after a
	// failure.
	r.Delete(ctx, warmUpID, &runc.DeleteOpts{Force: true})
	if err != nil {
		if msg := lastRuncError(r.Log); msg != "" {
			return fmt.Errorf("warm-up: runc run: %s", msg)
		}
		// A non-zero exit of /bin/true included.
		return fmt.Errorf("warm-up: runc run: %w", err)
	}
	return nil
}

// warmUpRootfs makes the throwaway container's root in dir: an overlay
// of an empty lower directory and a tmpfs's upper one, mounted on
// dir/rootfs, and returns its path.
func warmUpRootfs(dir string) (string, error) {
	lower, rw, rootfs := filepath.Join(dir, "lower"), filepath.Join(dir, "rw"), filepath.Join(dir, "rootfs")
	for _, d := range []string{lower, rw, rootfs} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", err
		}
	}
	if err := unix.Mount("tmpfs", rw, "tmpfs", 0, "mode=0755"); err != nil {
		return "", fmt.Errorf("mount tmpfs on %s: %w", rw, err)
	}
	for _, d := range []string{"upper", "work"} {
		if err := os.Mkdir(filepath.Join(rw, d), 0o755); err != nil {
			return "", err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lower, rw, rw)
	if err := unix.Mount("overlay", rootfs, "overlay", 0, opts); err != nil {
		return "", fmt.Errorf("mount overlay on %s: %w", rootfs, err)
	}
	return rootfs, nil
}
