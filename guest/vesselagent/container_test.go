package main

import "testing"

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
