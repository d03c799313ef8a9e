package main

import (
	"strings"
	"testing"
	"time"

	"github.com/vesselvm/vessel/vmm"
)

func TestParseDisk(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    vmm.Disk
		wantErr string
	}{
		{"a.img", vmm.Disk{Path: "a.img"}, ""},
		{"/x/b.img,ro", vmm.Disk{Path: "/x/b.img", ReadOnly: true}, ""},
		{"c.img,serial=disk-1,ro", vmm.Disk{Path: "c.img", ReadOnly: true, Serial: "disk-1"}, ""},
		{"", vmm.Disk{}, "no image path"},
		{",ro", vmm.Disk{}, "no image path"},
		{"d.img,rw", vmm.Disk{}, "unknown option"},
		{"d.img,ro=1", vmm.Disk{}, "unknown option"},
		{"d.img,serial=123456789012345678901", vmm.Disk{}, "longer than 20"},
	} {
		got, err := parseDisk(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseDisk(%q) error %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseDisk(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseVsock(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    vmm.Vsock
		wantErr string
	}{
		{"/run/v.sock", vmm.Vsock{Path: "/run/v.sock", CID: 3}, ""},
		{"v.sock,cid=42", vmm.Vsock{Path: "v.sock", CID: 42}, ""},
		{"", vmm.Vsock{}, "no socket path"},
		{"v.sock,cid=2", vmm.Vsock{}, "from 3"},
		{"v.sock,cid=4294967295", vmm.Vsock{}, "from 3"},
		{"v.sock,cid=x", vmm.Vsock{}, "from 3"},
		{"v.sock,port=1", vmm.Vsock{}, "unknown option"},
	} {
		got, err := parseVsock(tc.in, 3)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseVsock(%q) error %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got.CID != tc.want.CID || got.Path != tc.want.Path || got.Dial != nil {
			t.Errorf("parseVsock(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseBalloon(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    vmm.Balloon
		wantErr string
	}{
		{"on", vmm.Balloon{Reporting: true, DeflateOnOOM: true, StatsInterval: time.Second}, ""},
		{"reporting", vmm.Balloon{Reporting: true}, ""},
		{"deflate-on-oom,stats=500ms,mib=64", vmm.Balloon{DeflateOnOOM: true, StatsInterval: 500 * time.Millisecond, TargetMiB: 64}, ""},
		{"stats=-1s", vmm.Balloon{}, "duration"},
		{"stats", vmm.Balloon{}, "unknown option"},
		{"mib=lots", vmm.Balloon{}, "number of MiB"},
		{"reporting=1", vmm.Balloon{}, "unknown option"},
		{"", vmm.Balloon{}, "unknown option"},
	} {
		got, err := parseBalloon(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseBalloon(%q) error %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || *got != tc.want {
			t.Errorf("parseBalloon(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// TestRestoreNets: a restored VM's network devices keep the MACs their
// guest knows: the backends vm run --restore makes carry none, and a
// mac= is refused.
func TestRestoreNets(t *testing.T) {
	nets, err := restoreNets([]string{"user,host-loopback", "none"})
	if err == nil {
		t.Fatalf("restoreNets accepted a bad kind: %+v", nets)
	}
	nets, err = restoreNets([]string{"user,host-loopback"})
	if err != nil || len(nets) != 1 || nets[0].MAC != nil || nets[0].User == nil {
		t.Errorf("restoreNets(user): %+v, %v: want a user network without a MAC", nets, err)
	}
	if _, err := restoreNets([]string{"user,mac=52:54:00:12:34:56"}); err == nil || !strings.Contains(err.Error(), "keeps the MACs") {
		t.Errorf("restoreNets(user,mac=): %v, want the refusal", err)
	}
}
