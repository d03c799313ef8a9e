package netconf

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/guest/cmdline"
)

func TestResolvConfText(t *testing.T) {
	for _, tc := range []struct {
		servers []string
		want    string
	}{
		{nil, ""},
		{[]string{"192.168.127.1"}, "nameserver 192.168.127.1\n"},
		{[]string{"1.1.1.1", "9.9.9.9"}, "nameserver 1.1.1.1\nnameserver 9.9.9.9\n"},
	} {
		if got := resolvConfText(tc.servers); got != tc.want {
			t.Errorf("resolvConfText(%q) = %q, want %q", tc.servers, got, tc.want)
		}
	}
}

func TestLinkRoutes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		net     cmdline.Net
		want    []string // Route.String() of each, in order
		wantErr string   // a part of the error, if one is expected
	}{
		{name: "none", net: cmdline.Net{Addr: "10.0.0.2/24"}},
		{name: "default only", net: cmdline.Net{Addr: "10.0.0.2/24", Gateway: "10.0.0.1"},
			want: []string{"{Ifindex: 7 Dst: <nil> Src: <nil> Gw: 10.0.0.1 Flags: [] Table: 0 Realm: 0}"}},
		{name: "link routes first, default last", net: cmdline.Net{Addr: "10.0.0.2/32", Gateway: "169.254.1.1", Routes: []cmdline.Route{
			{Dst: "192.168.0.0/16", Gateway: "169.254.1.1"}, {Dst: "169.254.1.1/32"}, {Dst: "::/0", Gateway: "2001:db8::1"}}},
			want: []string{
				"{Ifindex: 7 Dst: 169.254.1.1/32 Src: <nil> Gw: <nil> Flags: [] Table: 0 Realm: 0}",
				"{Ifindex: 7 Dst: 192.168.0.0/16 Src: <nil> Gw: 169.254.1.1 Flags: [] Table: 0 Realm: 0}",
				"{Ifindex: 7 Dst: ::/0 Src: <nil> Gw: 2001:db8::1 Flags: [] Table: 0 Realm: 0}",
				"{Ifindex: 7 Dst: <nil> Src: <nil> Gw: 169.254.1.1 Flags: [] Table: 0 Realm: 0}",
			}},
		{name: "bad destination", net: cmdline.Net{Routes: []cmdline.Route{{Dst: "nope"}}}, wantErr: `netconf: route to "nope"`},
		{name: "bad gateway", net: cmdline.Net{Routes: []cmdline.Route{{Dst: "10.1.0.0/16", Gateway: "x"}}}, wantErr: `netconf: route to 10.1.0.0/16: gateway "x"`},
		{name: "bad default gateway", net: cmdline.Net{Gateway: "x"}, wantErr: `netconf: default route: gateway "x"`},
	} {
		routes, err := LinkRoutes(7, tc.net)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: error %v, want one with %q", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		var got []string
		for _, r := range routes {
			got = append(got, r.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: routes\n%q\nwant\n%q", tc.name, got, tc.want)
		}
	}
}

// TestLinkByMACBadAddress: an address that does not parse is refused
// before any interface is looked at (no netlink, no root).
func TestLinkByMACBadAddress(t *testing.T) {
	for _, mac := range []string{"", "nope", "52:54:00:76:73"} {
		_, err := LinkByMAC(mac, 0)
		if err == nil || errors.Is(err, ErrNoLink) || !strings.HasPrefix(err.Error(), "netconf: hardware address ") {
			t.Errorf("LinkByMAC(%q): %v, want a hardware address error", mac, err)
		}
	}
}
