package main

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func TestSysctlPath(t *testing.T) {
	for _, tc := range []struct{ key, want string }{
		{"net.ipv4.ip_unprivileged_port_start", "/proc/sys/net/ipv4/ip_unprivileged_port_start"},
		{"net.ipv4.conf.eth0/100.forwarding", "/proc/sys/net/ipv4/conf/eth0.100/forwarding"},
		{"net..x", ""},
		{"net.ipv4./.", ""},
		{"net.ipv4.//.x", ""},
	} {
		got, err := sysctlPath(tc.key)
		if got != tc.want || (err != nil) != (tc.want == "") {
			t.Errorf("%s: %q %v, want %q", tc.key, got, err, tc.want)
		}
	}
}

// TestOwnPIDNamespace: only a new PID namespace (no path) is the
// container's own; one joined by path, or none, is shared.
func TestOwnPIDNamespace(t *testing.T) {
	for _, tc := range []struct {
		name string
		nss  []specs.LinuxNamespace
		want bool
	}{
		{"new", []specs.LinuxNamespace{{Type: specs.MountNamespace}, {Type: specs.PIDNamespace}}, true},
		{"joined", []specs.LinuxNamespace{{Type: specs.PIDNamespace, Path: "/proc/1/ns/pid"}}, false},
		{"none", []specs.LinuxNamespace{{Type: specs.MountNamespace}}, false},
	} {
		if got := ownPIDNamespace(&specs.Spec{Linux: &specs.Linux{Namespaces: tc.nss}}); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	if ownPIDNamespace(&specs.Spec{}) {
		t.Error("no Linux section: own, want shared")
	}
}

// TestTraversableDirs: the directories above a container's rootfs are
// made, or changed to, 0711 whatever the umask, so that runc can resolve
// the rootfs from inside a user namespace whose root is another user
// (runtime-tools' linux_uid_mappings failed with EACCES on 0700 ones).
func TestTraversableDirs(t *testing.T) {
	old := unix.Umask(0o077)
	defer unix.Umask(old)
	top := t.TempDir()
	a, b := filepath.Join(top, "a"), filepath.Join(top, "a", "b")
	if err := os.Mkdir(a, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := traversableDirs(a, b); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{a, b} {
		fi, err := os.Stat(d)
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o711 {
			t.Errorf("%s: %v, %v; want a 0711 directory", d, fi.Mode(), err)
		}
	}
	if err := traversableDirs(filepath.Join(top, "missing", "c")); err == nil {
		t.Error("a directory below a missing one was made")
	}
}

// TestSysfsBinds: each sysfs mount becomes a recursive bind of the
// agent's plain bind of /sys, read-only when it was; the other mounts
// and the caller's slice stay as they were.
func TestSysfsBinds(t *testing.T) {
	proc := specs.Mount{Destination: "/proc", Type: "proc", Source: "proc"}
	ro := specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "ro"}}
	rw := specs.Mount{Destination: "/host-sys", Type: "sysfs", Source: "sysfs"}
	in := []specs.Mount{proc, ro, rw}
	out, changed := sysfsBinds(in, "/run/vessel/sys")
	want := []specs.Mount{proc,
		{Destination: "/sys", Type: "bind", Source: "/run/vessel/sys", Options: []string{"rbind", "nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/host-sys", Type: "bind", Source: "/run/vessel/sys", Options: []string{"rbind", "nosuid", "noexec", "nodev"}}}
	if !changed || !reflect.DeepEqual(out, want) {
		t.Errorf("got %+v (changed %v), want %+v", out, changed, want)
	}
	if !reflect.DeepEqual(in, []specs.Mount{proc, ro, rw}) {
		t.Errorf("the spec's mounts changed: %+v", in)
	}
	if _, changed := sysfsBinds([]specs.Mount{proc}, "/x"); changed {
		t.Error("no sysfs mount, yet changed")
	}
	// Only a container with its own user namespace on the VM's network.
	a := &agent{}
	for _, nss := range [][]specs.LinuxNamespace{
		{{Type: specs.MountNamespace}},
		{{Type: specs.UserNamespace}, {Type: specs.NetworkNamespace}},
	} {
		spec := &specs.Spec{Linux: &specs.Linux{Namespaces: nss}, Mounts: []specs.Mount{ro}}
		if err := a.userNSSysfs(spec); err != nil || spec.Mounts[0].Type != "sysfs" || a.sysBound {
			t.Errorf("namespaces %v: %v, mounts %+v", nss, err, spec.Mounts)
		}
	}
}
