package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vesselvm/vessel/devices/virtio"
	"github.com/vesselvm/vessel/vmm"
)

// fakeVM records what the API asked of it.
type fakeVM struct {
	paused, stopped bool
	snapshots       []string
	snapErr         error
	balloon         *vmm.Balloon
}

func (f *fakeVM) Pause() error {
	if f.stopped {
		return vmm.ErrStopped
	}
	f.paused = true
	return nil
}

func (f *fakeVM) Resume() error {
	if !f.paused {
		return vmm.ErrNotPaused
	}
	f.paused = false
	return nil
}

func (f *fakeVM) Paused() bool { return f.paused }

func (f *fakeVM) Snapshot(dir string, _ vmm.SnapshotOptions) error {
	if f.snapErr != nil {
		return f.snapErr
	}
	f.snapshots = append(f.snapshots, dir)
	return nil
}

func (f *fakeVM) Stop() { f.stopped = true }

func (f *fakeVM) SetBalloon(mib uint64) error {
	if f.balloon == nil {
		return vmm.ErrNoBalloon
	}
	if mib > 256 {
		return fmt.Errorf("%w: more than the VM's 256 MiB", vmm.ErrInvalidConfig)
	}
	f.balloon.TargetMiB = mib
	return nil
}

func (f *fakeVM) BalloonConfig() (vmm.Balloon, error) {
	if f.balloon == nil {
		return vmm.Balloon{}, vmm.ErrNoBalloon
	}
	return *f.balloon, nil
}

func (f *fakeVM) BalloonState() (virtio.BalloonState, error) {
	if f.balloon == nil {
		return virtio.BalloonState{}, vmm.ErrNoBalloon
	}
	return virtio.BalloonState{TargetPages: uint32(f.balloon.TargetMiB << 8), ActualPages: 256, Reported: 4096,
		Stats: virtio.BalloonStats{Values: map[int]uint64{virtio.BalloonStatFreeMemory: 100 << 20}}}, nil
}

func TestAPI(t *testing.T) {
	type step struct {
		method, path string
		body         any
		wantCode     int    // 0: success (2xx)
		wantMsg      string // in the client's error
	}
	for _, tc := range []struct {
		name  string
		vm    *fakeVM
		steps []step
		check func(*testing.T, *fakeVM)
	}{
		{"pause, snapshot, stop", &fakeVM{}, []step{
			{method: "PATCH", path: "/vm", body: apiState{State: "Paused"}},
			{method: "PUT", path: "/snapshot/create", body: apiSnapshot{SnapshotPath: "/snap"}},
			{method: "PUT", path: "/actions", body: apiAction{ActionType: "Stop"}},
		}, func(t *testing.T, f *fakeVM) {
			if !f.stopped || len(f.snapshots) != 1 || f.snapshots[0] != "/snap" {
				t.Errorf("VM %+v, want one snapshot at /snap and stopped", f)
			}
		}},
		{"snapshot of a running VM", &fakeVM{}, []step{
			{method: "PUT", path: "/snapshot/create", body: apiSnapshot{SnapshotPath: "/snap"}, wantCode: exitUsage, wantMsg: "not paused"},
		}, nil},
		{"resume of a running VM", &fakeVM{}, []step{
			{method: "PATCH", path: "/vm", body: apiState{State: "Resumed"}, wantCode: exitUsage, wantMsg: "not paused"},
		}, nil},
		{"unknown state", &fakeVM{}, []step{
			{method: "PATCH", path: "/vm", body: apiState{State: "Sleeping"}, wantCode: exitUsage, wantMsg: "want Paused or Resumed"},
		}, nil},
		{"unknown field", &fakeVM{paused: true}, []step{
			{method: "PUT", path: "/snapshot/create", body: map[string]string{"snapshot_path": "/s", "mem_file_path": "/m"}, wantCode: exitUsage, wantMsg: "unknown field"},
		}, nil},
		{"empty path", &fakeVM{paused: true}, []step{
			{method: "PUT", path: "/snapshot/create", body: apiSnapshot{}, wantCode: exitUsage, wantMsg: "empty"},
		}, nil},
		{"snapshot refused", &fakeVM{paused: true, snapErr: errors.Join(vmm.ErrInvalidConfig, errors.New("dir not empty"))}, []step{
			{method: "PUT", path: "/snapshot/create", body: apiSnapshot{SnapshotPath: "/s"}, wantCode: exitUsage, wantMsg: "dir not empty"},
		}, nil},
		{"snapshot failed", &fakeVM{paused: true, snapErr: errors.New("disk full")}, []step{
			{method: "PUT", path: "/snapshot/create", body: apiSnapshot{SnapshotPath: "/s"}, wantCode: exitInternal, wantMsg: "disk full"},
		}, nil},
		{"pause of a stopped VM", &fakeVM{stopped: true}, []step{
			{method: "PATCH", path: "/vm", body: apiState{State: "Paused"}, wantCode: exitUsage, wantMsg: "stopped"},
		}, nil},
		{"wrong method", &fakeVM{}, []step{
			{method: "DELETE", path: "/vm", body: struct{}{}, wantCode: exitUsage, wantMsg: "use GET or PATCH"},
		}, nil},
		{"balloon target", &fakeVM{balloon: &vmm.Balloon{Reporting: true}}, []step{
			{method: "PATCH", path: "/balloon", body: map[string]uint64{"amount_mib": 64}},
		}, func(t *testing.T, f *fakeVM) {
			if f.balloon.TargetMiB != 64 {
				t.Errorf("balloon target %d MiB, want 64", f.balloon.TargetMiB)
			}
		}},
		{"balloon target too large", &fakeVM{balloon: &vmm.Balloon{}}, []step{
			{method: "PATCH", path: "/balloon", body: map[string]uint64{"amount_mib": 1024}, wantCode: exitUsage, wantMsg: "256 MiB"},
		}, nil},
		{"balloon target missing", &fakeVM{balloon: &vmm.Balloon{}}, []step{
			{method: "PATCH", path: "/balloon", body: struct{}{}, wantCode: exitUsage, wantMsg: "amount_mib is missing"},
		}, nil},
		{"no balloon", &fakeVM{}, []step{
			{method: "PATCH", path: "/balloon", body: map[string]uint64{"amount_mib": 1}, wantCode: exitUsage, wantMsg: "no balloon"},
		}, nil},
		{"unknown action", &fakeVM{}, []step{
			{method: "PUT", path: "/actions", body: apiAction{ActionType: "Reboot"}, wantCode: exitUsage, wantMsg: "want Stop"},
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "api.sock")
			srv, err := serveAPI(sock, tc.vm)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			c := apiClient(sock)
			for _, s := range tc.steps {
				err := c.call(s.method, s.path, s.body)
				var ee *exitError
				switch {
				case s.wantCode == 0 && err != nil:
					t.Fatalf("%s %s: %v", s.method, s.path, err)
				case s.wantCode != 0 && (!errors.As(err, &ee) || ee.code != s.wantCode || !strings.Contains(ee.msg, s.wantMsg)):
					t.Fatalf("%s %s: %v, want exit %d with %q", s.method, s.path, err, s.wantCode, s.wantMsg)
				}
			}
			if tc.check != nil {
				tc.check(t, tc.vm)
			}
		})
	}
}

// GET /balloon and /balloon/statistics answer in Firecracker's fields;
// statistics the guest did not report are left out.
func TestAPIBalloonGet(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	srv, err := serveAPI(sock, &fakeVM{balloon: &vmm.Balloon{TargetMiB: 32, DeflateOnOOM: true, Reporting: true, StatsInterval: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	get := func(path string) map[string]any {
		resp, err := apiClient(sock).hc.Get("http://vessel" + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d, %v", path, resp.StatusCode, err)
		}
		return m
	}
	b := get("/balloon")
	if b["amount_mib"] != 32.0 || b["deflate_on_oom"] != true || b["stats_polling_interval_s"] != 2.0 || b["free_page_reporting"] != true {
		t.Errorf("GET /balloon = %v", b)
	}
	st := get("/balloon/statistics")
	if st["target_mib"] != 32.0 || st["actual_mib"] != 1.0 || st["free_memory"] != float64(100<<20) || st["reported_bytes"] != 4096.0 {
		t.Errorf("GET /balloon/statistics = %v", st)
	}
	if _, ok := st["swap_in"]; ok {
		t.Errorf("GET /balloon/statistics has swap_in, which the guest did not report: %v", st)
	}
}

// GET /vm says whether the VM is paused; a second vessel cannot take a
// live API socket.
func TestAPIState(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	vm := &fakeVM{paused: true}
	srv, err := serveAPI(sock, vm)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	resp, err := apiClient(sock).hc.Get("http://vessel/vm")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st apiState
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st.State != "Paused" {
		t.Fatalf("GET /vm = %+v, %v; want Paused", st, err)
	}
	if _, err := serveAPI(sock, vm); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("a second server on a live socket: %v", err)
	}
}
