package agentproto

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselvm/vessel/guest/cmdline"
)

// TestCreateNetRoundTrip: a create's MAC changes and per-interface
// configuration arrive as sent, and a create without them encodes as
// before they existed.
func TestCreateNetRoundTrip(t *testing.T) {
	spec := &specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"true"}}}
	for _, tc := range []struct {
		name   string
		create Create
		absent []string // JSON keys the encoding must not have
	}{
		{name: "none", create: Create{Spec: spec, RootShare: "vessel-root"}, absent: []string{`"macs"`, `"net"`}},
		{name: "one MAC", create: Create{Spec: spec, MAC: &MACChange{From: "52:54:00:76:73:6c", To: "52:54:00:12:34:56"}}, absent: []string{`"macs"`, `"net"`}},
		{name: "two NICs", create: Create{Spec: spec, RootShare: "vessel-root",
			MACs: []MACChange{
				{From: "52:54:00:76:73:00", To: "0a:58:0a:00:00:02"},
				{From: "52:54:00:76:73:01", To: "0a:58:0a:01:00:02"},
			},
			Net: []cmdline.Net{
				{MAC: "0a:58:0a:00:00:02", Addr: "10.0.0.2/24", Addrs: []string{"fd00::2/64"}, Static: true, Gateway: "10.0.0.1",
					Routes: []cmdline.Route{{Dst: "::/0", Gateway: "fd00::1"}, {Dst: "169.254.1.1/32"}}, DNS: []string{"10.0.0.1"}, MTU: 1450},
				{MAC: "0a:58:0a:01:00:02", Static: true},
			}}},
	} {
		var b bytes.Buffer
		if err := Write(&b, Request{ID: 1, Op: OpCreate, Container: "c", Create: &tc.create}); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		for _, k := range tc.absent {
			if bytes.Contains(b.Bytes(), []byte(k)) {
				t.Errorf("%s: the encoding has %s: %s", tc.name, k, b.Bytes()[4:])
			}
		}
		var r Request
		if err := Read(&b, &r); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if r.Create == nil || !reflect.DeepEqual(*r.Create, tc.create) {
			t.Errorf("%s: got\n%+v\nwant\n%+v", tc.name, r.Create, tc.create)
		}
	}
}

// TestReplyLinksRoundTrip: a reply's count of configured interfaces
// arrives, and one without it (an old agent's) reads as 0.
func TestReplyLinksRoundTrip(t *testing.T) {
	for _, in := range []Reply{
		{ID: 1, Pid: 42, Steps: []Step{{Name: "mac", MS: 1}, {Name: StepNet, MS: 2.5}}, Links: 2},
		{ID: 2, Pid: 42},
	} {
		var b bytes.Buffer
		if err := Write(&b, in); err != nil {
			t.Fatal(err)
		}
		var out Reply
		if err := Read(&b, &out); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(out, in) {
			t.Errorf("got %+v, want %+v", out, in)
		}
	}
	var old Reply
	if err := json.Unmarshal([]byte(`{"id":3,"pid":7,"steps":[{"name":"runc","ms":1}]}`), &old); err != nil || old.Links != 0 {
		t.Errorf("an old agent's reply: %+v, %v", old, err)
	}
}

func TestCheckNet(t *testing.T) {
	macs := []MACChange{{From: "52:54:00:76:73:00", To: "0a:58:0a:00:00:02"}}
	nets := []cmdline.Net{{MAC: "0a:58:0a:00:00:02", Addr: "10.0.0.2/24"}}
	netStep := []Step{{Name: "mounts"}, {Name: StepNet}, {Name: "runc"}}
	oldSteps := []Step{{Name: "mac"}, {Name: "mounts"}, {Name: "runc"}}
	for _, tc := range []struct {
		name    string
		create  Create
		reply   Reply
		wantErr string // a part of the error; "" for none
	}{
		{name: "nothing asked, old agent", create: Create{MAC: &MACChange{}}, reply: Reply{Steps: oldSteps}},
		{name: "nothing asked, new agent", create: Create{}, reply: Reply{}},
		{name: "MACs and Net applied", create: Create{MACs: macs, Net: nets}, reply: Reply{Steps: netStep, Links: 1}},
		{name: "MACs only, applied", create: Create{MACs: macs}, reply: Reply{Steps: netStep}},
		{name: "old agent ignored them", create: Create{MACs: macs, Net: nets}, reply: Reply{Steps: oldSteps}, wantErr: `no "net" step`},
		{name: "old agent ignored MACs", create: Create{MACs: macs}, reply: Reply{Steps: oldSteps}, wantErr: `no "net" step`},
		{name: "too few links", create: Create{MACs: macs, Net: append(nets, nets...)}, reply: Reply{Steps: netStep, Links: 1}, wantErr: "1 interfaces configured, want 2"},
	} {
		err := tc.create.CheckNet(&tc.reply)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.wantErr != "" && (!errors.Is(err, ErrNetIgnored) || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: %v, want ErrNetIgnored with %q", tc.name, err, tc.wantErr)
		}
	}
}
