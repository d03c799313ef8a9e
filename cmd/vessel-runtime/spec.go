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
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselvm/vessel/guest/agentproto"
)

// maxConfig bounds the config.json read: a bundle's configuration is a
// few KiB; the agent takes at most agentproto.MaxFrame.
const maxConfig = 1 << 20

// bundle is a checked OCI bundle.
type bundle struct {
	dir    string      // absolute
	rootfs string      // absolute
	spec   *specs.Spec // as read
	binds  []bind      // the spec's bind mounts, in order
}

// bind is a bind mount of a host directory: a 9P share of its own that
// the agent mounts and binds at the destination.
type bind struct {
	source string // absolute, on the host
	vol    agentproto.Volume
}

// maxBinds is how many bind mounts a VM can take: one virtio device
// each, besides the entropy and vsock devices and the rootfs share,
// out of vmm's 18.
const maxBinds = 18 - 3

// isBind reports whether m is a bind mount.
func isBind(m specs.Mount) bool {
	return m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

// planBinds turns the spec's bind mounts into shares. The agent binds
// them after the other mounts, so a mount that follows a bind mount
// and lies on the same path (above or below it) is refused: its order
// would change.
func planBinds(bundleDir string, mounts []specs.Mount) ([]bind, error) {
	var binds []bind
	for i, m := range mounts {
		if !isBind(m) {
			for _, b := range binds {
				if within(m.Destination, b.vol.Destination) || within(b.vol.Destination, m.Destination) {
					return nil, fmt.Errorf("mount at %q: it follows the bind mount at %q on the same path, and vessel-runtime makes bind mounts after the others", m.Destination, b.vol.Destination)
				}
			}
			continue
		}
		if !filepath.IsAbs(m.Destination) || filepath.Clean(m.Destination) == "/" {
			return nil, fmt.Errorf("bind mount at %q: want an absolute destination other than /", m.Destination)
		}
		src := m.Source
		if !filepath.IsAbs(src) {
			src = filepath.Join(bundleDir, src)
		}
		fi, err := os.Stat(src)
		if err != nil {
			return nil, fmt.Errorf("bind mount of %q at %q: %w", m.Source, m.Destination, err)
		}
		if fi.Mode().IsRegular() {
			return nil, fmt.Errorf("bind mount of %q at %q: bind mounts of single files are not supported by vessel-runtime yet", m.Source, m.Destination)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("bind mount of %q at %q: only directories can be bound into a VM", m.Source, m.Destination)
		}
		if len(binds) == maxBinds {
			return nil, fmt.Errorf("bind mount of %q at %q: a VM takes at most %d bind mounts", m.Source, m.Destination, maxBinds)
		}
		binds = append(binds, bind{source: src, vol: agentproto.Volume{
			Tag:         fmt.Sprintf("vessel-bind-%d", i),
			Destination: filepath.Clean(m.Destination),
			ReadOnly:    slices.Contains(m.Options, "ro"),
			Options:     m.Options,
		}})
	}
	return binds, nil
}

// within reports whether path p is dir or below it.
func within(p, dir string) bool {
	p, dir = filepath.Clean(p), filepath.Clean(dir)
	return p == dir || dir == "/" || strings.HasPrefix(p, dir+"/")
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
	binds, err := planBinds(abs, spec.Mounts)
	if err != nil {
		return nil, errorf("bundle %q: %v", dir, err)
	}
	return &bundle{dir: abs, rootfs: rootfs, spec: &spec, binds: binds}, nil
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
	if s.Hooks != nil && (len(s.Hooks.Prestart)+len(s.Hooks.CreateRuntime)+len(s.Hooks.CreateContainer)+
		len(s.Hooks.StartContainer)+len(s.Hooks.Poststart)+len(s.Hooks.Poststop) > 0) {
		return errors.New("hooks are not supported by vessel-runtime yet")
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
// root.path to where the share is mounted and adds the bind mounts
// (taken out here) with their shares as sources; a cgroup path of the
// host (a systemd slice, say) means nothing in the VM, so runc's
// default is used.
func (b *bundle) guestSpec() *specs.Spec {
	s := *b.spec
	s.Mounts = nil
	for _, m := range b.spec.Mounts {
		if !isBind(m) {
			s.Mounts = append(s.Mounts, m)
		}
	}
	root := *s.Root
	root.Path = "rootfs"
	s.Root = &root
	linux := *s.Linux
	linux.CgroupsPath = ""
	s.Linux = &linux
	return &s
}
