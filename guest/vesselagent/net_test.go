package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/guest/agentproto"
	"github.com/vesselvm/vessel/guest/cmdline"
)

func TestPlanNet(t *testing.T) {
	const (
		tmpl0, tmpl1 = "52:54:00:76:73:00", "52:54:00:76:73:01"
		mac0, mac1   = "0a:58:0a:00:00:02", "0a:58:0a:01:00:02"
	)
	static := func(mac string) cmdline.Net {
		return cmdline.Net{MAC: mac, Addr: "10.0.0.2/24", Addrs: []string{"fd00::2/64"}, Gateway: "10.0.0.1", MTU: 1450}
	}
	two := []agentproto.MACChange{{From: tmpl0, To: mac0}, {From: tmpl1, To: mac1}}
	for _, tc := range []struct {
		name    string
		create  agentproto.Create
		want    []string // the actions' String(), in order
		wantErr string   // a part of the error; "" for none
	}{
		{name: "nothing", create: agentproto.Create{}},
		{name: "vessel run's MAC", create: agentproto.Create{MAC: &agentproto.MACChange{From: tmpl0, To: mac0}},
			want: []string{"mac: mac " + tmpl0 + " to " + mac0}},
		{name: "MAC, MACs, then Net", create: agentproto.Create{
			MAC:  &agentproto.MACChange{From: "52:54:00:76:73:6c", To: "0a:58:0a:02:00:02"},
			MACs: two,
			Net:  []cmdline.Net{static(mac1), {MAC: mac0, Static: true}}},
			want: []string{
				"mac: mac 52:54:00:76:73:6c to 0a:58:0a:02:00:02",
				"net: mac " + tmpl0 + " to " + mac0,
				"net: mac " + tmpl1 + " to " + mac1,
				"net: link " + mac1,
				"net: link " + mac0,
			}},
		{name: "Net without MAC changes", create: agentproto.Create{Net: []cmdline.Net{static(mac0)}},
			want: []string{"net: link " + mac0}},
		{name: "Net names a MAC in upper case", create: agentproto.Create{MACs: two[:1], Net: []cmdline.Net{static(strings.ToUpper(mac0))}},
			want: []string{"net: mac " + tmpl0 + " to " + mac0, "net: link " + strings.ToUpper(mac0)}},
		{name: "a change to the address it has", create: agentproto.Create{MACs: []agentproto.MACChange{{From: mac0, To: mac0}}},
			want: []string{"net: mac " + mac0 + " to " + mac0}},

		{name: "bad From", create: agentproto.Create{MACs: []agentproto.MACChange{{From: "nope", To: mac0}}}, wantErr: "mac: "},
		{name: "multicast To", create: agentproto.Create{MACs: []agentproto.MACChange{{From: tmpl0, To: "01:00:5e:00:00:01"}}},
			wantErr: "not a unicast Ethernet address"},
		{name: "one interface moved twice", create: agentproto.Create{MACs: []agentproto.MACChange{{From: tmpl0, To: mac0}, {From: tmpl0, To: mac1}}},
			wantErr: "two changes move the interface that has " + tmpl0},
		{name: "one address given twice", create: agentproto.Create{MAC: &agentproto.MACChange{From: tmpl1, To: mac0}, MACs: two[:1]},
			wantErr: "two changes give address " + mac0},
		{name: "a chain", create: agentproto.Create{MACs: []agentproto.MACChange{{From: tmpl0, To: mac0}, {From: mac0, To: mac1}}},
			wantErr: mac0 + " is both an address to change and one to give"},
		{name: "invalid Net", create: agentproto.Create{Net: []cmdline.Net{{MAC: mac0, Static: true, MTU: 20}}},
			wantErr: "net " + mac0 + ": cmdline: malformed vessel.net: mtu 20"},
		{name: "DHCP", create: agentproto.Create{MACs: two[:1], Net: []cmdline.Net{{MAC: mac0}}},
			wantErr: "net " + mac0 + ": no address and not static"},
		{name: "an interface configured twice", create: agentproto.Create{Net: []cmdline.Net{static(mac0), static(strings.ToUpper(mac0))}},
			wantErr: "net " + mac0 + ": the interface is configured twice"},
		{name: "Net names the template's address", create: agentproto.Create{MACs: two, Net: []cmdline.Net{static(tmpl0)}},
			wantErr: "net " + tmpl0 + ": a MAC change moves this interface to another address"},
		{name: "Net with no matching MAC", create: agentproto.Create{MACs: two, Net: []cmdline.Net{static("0a:58:0a:09:00:02")}},
			wantErr: "net 0a:58:0a:09:00:02: no MAC change gives an interface this address"},
	} {
		acts, err := planNet(&tc.create)
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
		for _, a := range acts {
			got = append(got, a.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: actions\n%q\nwant\n%q", tc.name, got, tc.want)
		}
	}
}

// TestApplyNetNothing: without network changes, create's reply has no
// network step and no interface counted (as before Create.MACs and
// Create.Net).
func TestApplyNetNothing(t *testing.T) {
	var steps stepTimer
	if links, err := applyNet(nil, &steps); links != 0 || err != nil || len(steps.steps) != 0 {
		t.Errorf("applyNet(nil) = %d, %v, steps %v; want 0, nil, none", links, err, steps.steps)
	}
}
