package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/devices/usernet"
)

func TestParseNet(t *testing.T) {
	for _, tc := range []struct {
		in            string
		tap           string
		user          bool
		mac, addr, gw string
		dns           []string
		publish       []usernet.Publish
		hostLoopback  bool
		wantErr       string
	}{
		{in: "user", user: true},
		{in: "user,host-loopback", user: true, hostLoopback: true},
		{in: "user,publish=8080:80,host-loopback,mac=52:54:00:00:00:07", user: true, hostLoopback: true,
			mac: "52:54:00:00:00:07", publish: []usernet.Publish{{Host: ":8080", GuestPort: 80}}},
		{in: "user,mac=52:54:00:00:00:07", user: true, mac: "52:54:00:00:00:07"},
		{in: "user,publish=8080:80,publish=127.0.0.1:2222:22", user: true,
			publish: []usernet.Publish{{Host: ":8080", GuestPort: 80}, {Host: "127.0.0.1:2222", GuestPort: 22}}},
		{in: "user,publish=[::1]:8080:80/tcp", user: true, publish: []usernet.Publish{{Host: "[::1]:8080", GuestPort: 80}}},
		{in: "tap=tap0", tap: "tap0"},
		{in: "tap=tap0,ip=172.16.0.2/24,gw=172.16.0.1,dns=1.1.1.1,dns=9.9.9.9", tap: "tap0",
			addr: "172.16.0.2/24", gw: "172.16.0.1", dns: []string{"1.1.1.1", "9.9.9.9"}},
		{in: "", wantErr: "unknown network"},
		{in: "bridge=br0", wantErr: "unknown network"},
		{in: "user=x", wantErr: "takes no value"},
		{in: "tap", wantErr: "tap=NAME"},
		{in: "tap=", wantErr: "tap=NAME"},
		{in: "user,mac=zz", wantErr: "six hex bytes"},
		{in: "user,mac=01:00:00:00:00:01", wantErr: "multicast"},
		{in: "user,publish=80", wantErr: "no guest port"},
		{in: "user,publish=0:80", wantErr: "host port"},
		{in: "user,publish=8080:0", wantErr: "guest port"},
		{in: "user,publish=8080:65536", wantErr: "guest port"},
		{in: "user,publish=host:8080:80", wantErr: "not an IP address"},
		{in: "user,publish=53:53/udp", wantErr: "only tcp"},
		{in: "user,ip=10.0.0.2/24", wantErr: "unknown option"},
		{in: "tap=t,publish=80:80", wantErr: "unknown option"},
		{in: "tap=t,ip=10.0.0.2", wantErr: "ADDRESS/PREFIX"},
		{in: "tap=t,gw=1.2.3.4", wantErr: "need ip="},
		{in: "tap=t,ip=10.0.0.2/24,gw=x", wantErr: "not an IP address"},
		{in: "tap=t,mtu", wantErr: "KEY=VALUE"},
		{in: "tap=t,host-loopback", wantErr: "KEY=VALUE"},
		{in: "user,host-loopback=1", wantErr: "unknown option"},
	} {
		n, g, err := parseNet(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseNet(%q) error %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseNet(%q): %v", tc.in, err)
			continue
		}
		if n.Tap != tc.tap || (n.User != nil) != tc.user {
			t.Errorf("parseNet(%q): tap %q user %v", tc.in, n.Tap, n.User != nil)
		}
		if len(n.MAC) != 6 || g.MAC != n.MAC.String() || (tc.mac != "" && g.MAC != tc.mac) {
			t.Errorf("parseNet(%q): MAC %s, guest %s", tc.in, n.MAC, g.MAC)
		}
		if tc.user {
			// A user network's fixed addresses, statically: no DHCP.
			tc.addr, tc.gw, tc.dns = "192.168.127.2/24", "192.168.127.1", []string{"192.168.127.1"}
		}
		if g.Addr != tc.addr || g.Gateway != tc.gw || !slices.Equal(g.DNS, tc.dns) || tc.user && (g.MTU != usernet.MTU || g.DHCP()) {
			t.Errorf("parseNet(%q): guest config %+v", tc.in, g)
		}
		if tc.user && !slices.Equal(n.User.Publish, tc.publish) {
			t.Errorf("parseNet(%q): publish %+v, want %+v", tc.in, n.User.Publish, tc.publish)
		}
		if tc.user && n.User.HostLoopback != tc.hostLoopback {
			t.Errorf("parseNet(%q): host loopback %v, want %v", tc.in, n.User.HostLoopback, tc.hostLoopback)
		}
	}
}

func TestParseUserNetwork(t *testing.T) {
	for _, tc := range []struct {
		in           string
		user         bool
		hostLoopback bool
		wantErr      string
	}{
		{in: "user", user: true},
		{in: "user,host-loopback", user: true, hostLoopback: true},
		{in: "none"},
		{in: "bridge", wantErr: "want user"},
		{in: "host", wantErr: "want user"},
		{in: "none,host-loopback", wantErr: "want user"},
		{in: "user,publish=80:80", wantErr: "unknown option"},
		{in: "user,", wantErr: "unknown option"},
	} {
		un, err := parseUserNetwork(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseUserNetwork(%q) error %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseUserNetwork(%q): %v", tc.in, err)
			continue
		}
		if (un != nil) != tc.user || un != nil && un.HostLoopback != tc.hostLoopback {
			t.Errorf("parseUserNetwork(%q) = %+v, want user %v, host loopback %v", tc.in, un, tc.user, tc.hostLoopback)
		}
	}
}

func TestRandomMAC(t *testing.T) {
	a, b := randomMAC(), randomMAC()
	if a[0]&1 != 0 || a[0]&2 == 0 || a.String() == b.String() {
		t.Errorf("randomMAC: %s, %s: want distinct locally administered unicast addresses", a, b)
	}
}
