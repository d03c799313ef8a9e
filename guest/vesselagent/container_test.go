package main

import (
	"os"
	"path/filepath"
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
