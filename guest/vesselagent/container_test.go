package main

import (
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
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
