package main

import (
	"slices"
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
		name string
		net  cmdline.Net
		want []string // Route.String() of each, in order
	}{
		{"none", cmdline.Net{Addr: "10.0.0.2/24"}, nil},
		{"default only", cmdline.Net{Addr: "10.0.0.2/24", Gateway: "10.0.0.1"},
			[]string{"{Ifindex: 7 Dst: <nil> Src: <nil> Gw: 10.0.0.1 Flags: [] Table: 0 Realm: 0}"}},
		{"link routes first, default last", cmdline.Net{Addr: "10.0.0.2/32", Gateway: "169.254.1.1", Routes: []cmdline.Route{
			{Dst: "192.168.0.0/16", Gateway: "169.254.1.1"}, {Dst: "169.254.1.1/32"}, {Dst: "::/0", Gateway: "2001:db8::1"}}},
			[]string{
				"{Ifindex: 7 Dst: 169.254.1.1/32 Src: <nil> Gw: <nil> Flags: [] Table: 0 Realm: 0}",
				"{Ifindex: 7 Dst: 192.168.0.0/16 Src: <nil> Gw: 169.254.1.1 Flags: [] Table: 0 Realm: 0}",
				"{Ifindex: 7 Dst: ::/0 Src: <nil> Gw: 2001:db8::1 Flags: [] Table: 0 Realm: 0}",
				"{Ifindex: 7 Dst: <nil> Src: <nil> Gw: 169.254.1.1 Flags: [] Table: 0 Realm: 0}",
			}},
	} {
		routes, err := linkRoutes(7, tc.net)
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
	if _, err := linkRoutes(7, cmdline.Net{Routes: []cmdline.Route{{Dst: "nope"}}}); err == nil {
		t.Error("linkRoutes took a route to \"nope\"")
	}
}
