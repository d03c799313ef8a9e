package main

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/vmm"
)

// fakeVM records what the API asked of it.
type fakeVM struct {
	paused, stopped bool
	snapshots       []string
	snapErr         error
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
