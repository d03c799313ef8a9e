package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// maxConfig bounds the config.json read: a bundle's configuration is a
// few KiB; the agent takes at most agentproto.MaxFrame.
const maxConfig = 1 << 20

// bundle is a checked OCI bundle.
type bundle struct {
	dir    string      // absolute
	rootfs string      // absolute
	spec   *specs.Spec // as read
}

// loadBundle reads and checks dir/config.json. Everything this slice of
// vessel-runtime cannot do is refused here, before anything is made.
func loadBundle(dir string) (*bundle, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, errorf("bundle %q: %v", dir, err)
	}
	if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
		return nil, errorf("bundle %q: not a directory", dir)
	}
	f, err := os.Open(filepath.Join(abs, "config.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errorf("bundle %q: no config.json", dir)
	}
	if err != nil {
		return nil, errorf("bundle %q: %v", dir, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfig+1))
	if err != nil {
		return nil, errorf("bundle %q: config.json: %v", dir, err)
	}
	if len(b) > maxConfig {
		return nil, errorf("bundle %q: config.json is larger than %d bytes", dir, maxConfig)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, errorf("bundle %q: config.json: %v", dir, err)
	}
	if err := checkSpec(&spec); err != nil {
		return nil, errorf("bundle %q: %v", dir, err)
	}
	rootfs := spec.Root.Path
	if !filepath.IsAbs(rootfs) {
		rootfs = filepath.Join(abs, rootfs)
	}
	if fi, err := os.Stat(rootfs); err != nil || !fi.IsDir() {
		return nil, errorf("bundle %q: root.path %q is not a directory", dir, spec.Root.Path)
	}
	return &bundle{dir: abs, rootfs: rootfs, spec: &spec}, nil
}

// checkSpec refuses what vessel-runtime does not support yet, with a
// message naming it, rather than ignoring it.
func checkSpec(s *specs.Spec) error {
	if s.Process == nil || len(s.Process.Args) == 0 {
		return errors.New("config.json: no process.args")
	}
	if s.Root == nil || s.Root.Path == "" {
		return errors.New("config.json: no root.path")
	}
	if s.Process.Terminal {
		return errors.New("process.terminal: a terminal is not supported by vessel-runtime yet")
	}
	if s.Hooks != nil && (len(s.Hooks.Prestart)+len(s.Hooks.CreateRuntime)+len(s.Hooks.CreateContainer)+
		len(s.Hooks.StartContainer)+len(s.Hooks.Poststart)+len(s.Hooks.Poststop) > 0) {
		return errors.New("hooks are not supported by vessel-runtime yet")
	}
	for _, m := range s.Mounts {
		if m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind") {
			return fmt.Errorf("mount of %q at %q: bind mounts of host paths are not supported by vessel-runtime yet", m.Source, m.Destination)
		}
	}
	if s.Linux == nil {
		return errors.New("config.json: no linux section")
	}
	hasNet := false
	for _, ns := range s.Linux.Namespaces {
		if ns.Path != "" {
			return fmt.Errorf("%s namespace path %q: joining an existing namespace is not supported by vessel-runtime yet", ns.Type, ns.Path)
		}
		if ns.Type == specs.NetworkNamespace {
			hasNet = true
		}
	}
	if !hasNet {
		return errors.New("no network namespace: a container in a VM cannot share the host's network")
	}
	return nil
}

// guestSpec is the configuration the guest's runc gets: the bundle's,
// but for what differs between the host and the VM. The agent sets
// root.path to where the share is mounted; a cgroup path of the host
// (a systemd slice, say) means nothing in the VM, so runc's default is
// used.
func (b *bundle) guestSpec() *specs.Spec {
	s := *b.spec
	root := *s.Root
	root.Path = "rootfs"
	s.Root = &root
	linux := *s.Linux
	linux.CgroupsPath = ""
	s.Linux = &linux
	return &s
}
