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
	"github.com/vesselvm/vessel/vmm"
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

// bind is a bind mount of a host directory (a 9P share of its own that
// the agent mounts and binds at the destination) or of a single file
// (file set: the VMM process binds it into the files share, see
// mounts.go, and the agent binds it from there).
type bind struct {
	source string // absolute, on the host
	file   bool
	vol    agentproto.Volume
}

// maxBinds is how many directory bind mounts a VM can take: one virtio
// device each, besides the entropy, vsock and balloon devices, the rootfs
// share and the files share. A pod's sandbox (its share) and the network
// interfaces take further devices: vmm.New refuses a VM that would need
// more than vmm.MaxVirtioDevices in all, in one line.
const maxBinds = vmm.MaxVirtioDevices - 5

// maxFileBinds bounds the bind mounts of single files, which share one
// device.
const maxFileBinds = 64

// filesTag is the mount tag of the share of single-file bind mounts.
const filesTag = "vessel-files"

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
	dirs, files := 0, 0
	for _, m := range mounts {
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
		vol := agentproto.Volume{
			Destination: filepath.Clean(m.Destination),
			ReadOnly:    slices.Contains(m.Options, "ro"),
			Options:     m.Options,
		}
		switch {
		case fi.Mode().IsRegular():
			if files == maxFileBinds {
				return nil, fmt.Errorf("bind mount of %q at %q: a VM takes at most %d bind mounts of single files", m.Source, m.Destination, maxFileBinds)
			}
			vol.Tag, vol.Path = filesTag, fmt.Sprintf("f%d", files)
			binds = append(binds, bind{source: src, file: true, vol: vol})
			files++
		case fi.IsDir():
			if dirs == maxBinds {
				return nil, fmt.Errorf("bind mount of %q at %q: a VM takes at most %d bind mounts of directories", m.Source, m.Destination, maxBinds)
			}
			// Tags numbered densely, so that the same layout of binds
			// gives the same tags (a template's, see shareTags).
			vol.Tag = fmt.Sprintf("vessel-bind-%d", dirs)
			binds = append(binds, bind{source: src, vol: vol})
			dirs++
		default:
			return nil, fmt.Errorf("bind mount of %q at %q: only directories and regular files can be bound into a VM", m.Source, m.Destination)
		}
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
	if err := checkHooks(s.Hooks); err != nil {
		return err
	}
	if s.Linux == nil {
		return errors.New("config.json: no linux section")
	}
	hasNet := false
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			hasNet = true
		}
		if ns.Path != "" && sandboxOf(s) != "" {
			continue // checked against the sandbox (checkMemberNamespaces)
		}
		if ns.Path != "" && ns.Type != specs.NetworkNamespace {
			return fmt.Errorf("%s namespace path %q: a container in a VM of its own cannot join a namespace of the host", ns.Type, ns.Path)
		}
		if ns.Path != "" {
			if fi, err := os.Stat(ns.Path); err != nil || fi.IsDir() {
				return fmt.Errorf("network namespace path %q: not a namespace", ns.Path)
			}
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
	// The hooks are host programs, run by vessel-runtime on the host.
	s.Hooks = nil
	// AppArmor profiles and SELinux labels name the host's policies,
	// which the guest's kernel has not loaded (it has no LSM): they
	// apply to nothing in the VM, as under Kata Containers, and the
	// guest's runc would refuse them. The VM is the boundary.
	if s.Process != nil && (s.Process.ApparmorProfile != "" || s.Process.SelinuxLabel != "") {
		proc := *s.Process
		proc.ApparmorProfile, proc.SelinuxLabel = "", ""
		s.Process = &proc
	}
	linux := *s.Linux
	// The container's network is the VM's own (see net.go): it stays
	// in the guest's network namespace, where the init configured it.
	linux.Namespaces = nil
	for _, ns := range s.Linux.Namespaces {
		if ns.Type != specs.NetworkNamespace {
			linux.Namespaces = append(linux.Namespaces, ns)
		}
	}
	linux.CgroupsPath = ""
	linux.MountLabel = ""
	linux.Resources = guestResources(linux.Resources)
	s.Linux = &linux
	return &s
}

// netnsPath is the spec's network namespace path, or "".
func netnsPath(s *specs.Spec) string {
	if s.Linux == nil {
		return ""
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return ns.Path
		}
	}
	return ""
}
