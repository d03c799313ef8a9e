package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/kvm"
)

// TestRestoreConfig: restoreConfig takes the snapshot's devices and
// replaces what the options give, one for one; the shares need the
// snapshot's tags in its order, and get the options' directories and
// modes.
func TestRestoreConfig(t *testing.T) {
	snapMAC := []byte{0x52, 0x54, 0, 0x76, 0x73, 0x6c}
	newMAC := []byte{0x52, 0x54, 0, 1, 2, 3}
	withDevices := func() *snapState {
		st := testState()
		st.Disks = []Disk{{Path: "/snap.img"}}
		st.Nets = []Net{{MAC: snapMAC, Tap: "vtap0"}}
		st.Vsock = &snapVsock{CID: 3, Path: "/snap/vsock"}
		st.Shares = []snapShare{{Tag: "vessel-root"}, {Tag: "vessel-bind-0"}}
		return st
	}
	shares := []Share{{Tag: "vessel-root", Dir: "/bundle/rootfs", ReadOnly: true}, {Tag: "vessel-bind-0", Dir: "/data"}}
	for _, tc := range []struct {
		name  string
		st    func() *snapState
		o     RestoreOptions
		check func(t *testing.T, c Config)
		err   string // the error's text, if restoreConfig must refuse
	}{
		{name: "no devices", st: testState, check: func(t *testing.T, c Config) {
			if c.CPUs != 1 || c.Memory != 64<<20 || c.KVMDevice != kvm.DefaultDevice || c.Console == nil {
				t.Errorf("config %+v", c)
			}
			if c.Shares != nil || c.Disks != nil || c.Nets != nil || c.Vsock != nil {
				t.Errorf("devices in %+v", c)
			}
		}},
		{name: "shares replaced", st: withDevices, o: RestoreOptions{Shares: shares}, check: func(t *testing.T, c Config) {
			if !reflect.DeepEqual(c.Shares, shares) {
				t.Errorf("shares %+v, want %+v", c.Shares, shares)
			}
			if &c.Shares[0] == &shares[0] {
				t.Error("the options' slice is shared")
			}
			// Everything else as the snapshot has it.
			if c.Disks[0].Path != "/snap.img" || c.Nets[0].Tap != "vtap0" || c.Vsock.Path != "/snap/vsock" {
				t.Errorf("config %+v", c)
			}
		}},
		{name: "everything replaced", st: withDevices, o: RestoreOptions{
			Shares: shares, Disks: []Disk{{Path: "/new.img"}}, Nets: []Net{{MAC: newMAC, Tap: "vtap9"}},
			Vsock: &Vsock{CID: 7, Path: "/new/vsock"}, KVMDevice: "/dev/other",
		}, check: func(t *testing.T, c Config) {
			if c.Disks[0].Path != "/new.img" || c.Vsock.CID != 7 || c.Vsock.Path != "/new/vsock" || c.KVMDevice != "/dev/other" {
				t.Errorf("config %+v", c)
			}
			if n := c.Nets[0]; n.Tap != "vtap9" || !reflect.DeepEqual([]byte(n.MAC), newMAC) || !reflect.DeepEqual([]byte(n.formerMAC), snapMAC) {
				t.Errorf("net %+v", n)
			}
			if !reflect.DeepEqual(c.Shares, shares) {
				t.Errorf("shares %+v", c.Shares)
			}
		}},
		{name: "shares not given", st: withDevices, err: `the snapshot has 2 shares ["vessel-root" "vessel-bind-0"], 0 given`},
		{name: "too few shares", st: withDevices, o: RestoreOptions{Shares: shares[:1]}, err: "the snapshot has 2 shares"},
		{name: "shares the snapshot lacks", st: testState, o: RestoreOptions{Shares: shares}, err: "the snapshot has 0 shares [], 2 given"},
		{name: "tags in another order", st: withDevices, o: RestoreOptions{Shares: []Share{shares[1], shares[0]}},
			err: `share 0 (/data) has tag "vessel-bind-0", the snapshot's has "vessel-root"`},
		{name: "another tag", st: withDevices, o: RestoreOptions{Shares: []Share{shares[0], {Tag: "vessel-bind-1", Dir: "/x"}}},
			err: `share 1 (/x) has tag "vessel-bind-1", the snapshot's has "vessel-bind-0"`},
		{name: "network count", st: withDevices, o: RestoreOptions{Shares: shares, Nets: []Net{{Tap: "a"}, {Tap: "b"}}},
			err: "the snapshot has 1 network devices, 2 given"},
		{name: "disk count", st: withDevices, o: RestoreOptions{Shares: shares, Disks: []Disk{}}, err: "the snapshot has 1 disks, 0 given"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := restoreConfig(tc.st(), tc.o)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("restoreConfig = %v, want an error with %q", err, tc.err)
				}
				if !errors.Is(err, ErrInvalidConfig) || errors.Is(err, ErrSnapshot) {
					t.Errorf("error %v: want ErrInvalidConfig, not ErrSnapshot (the snapshot is fine)", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

// TestReadSnapshotShares: ReadSnapshot tells the snapshot's share tags,
// in order, for a caller to check its layout before a restore.
func TestReadSnapshotShares(t *testing.T) {
	for _, tc := range []struct {
		name   string
		shares []snapShare
		want   []Share
	}{
		{"none", nil, nil},
		{"two", []snapShare{{Tag: "vessel-root"}, {Tag: "vessel-files"}}, []Share{{Tag: "vessel-root"}, {Tag: "vessel-files"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			st := testState()
			st.Shares = tc.shares
			b, err := encodeState(st)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, snapStateFile), b, 0o600); err != nil {
				t.Fatal(err)
			}
			info, err := ReadSnapshot(dir, "v1")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(info.Shares, tc.want) {
				t.Errorf("Shares = %+v, want %+v", info.Shares, tc.want)
			}
		})
	}
}
