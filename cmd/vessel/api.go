package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/vesselvm/vessel/devices/virtio"
	"github.com/vesselvm/vessel/vmm"
)

// The VM API `vessel vm run --api SOCKET` serves: HTTP/1.1 with JSON
// bodies on a Unix socket, in the shape of Firecracker's API
// (docs/api_requests in Firecracker; README "The VM API"):
//
//	GET   /vm               {"state": "Running" | "Paused"}
//	PATCH /vm               {"state": "Paused" | "Resumed"}
//	PUT   /snapshot/create  {"snapshot_path": DIR}  (the VM must be paused)
//	PUT   /actions          {"action_type": "Stop"}
//	GET   /balloon          {"amount_mib": N, "deflate_on_oom": B, "stats_polling_interval_s": N, "free_page_reporting": B}
//	PATCH /balloon          {"amount_mib": N}
//	GET   /balloon/statistics  {"target_mib": N, "actual_mib": N, "free_memory": BYTES, ...}
//
// A snapshot is a directory (vm.state and memory), not Firecracker's
// two files. Errors answer 400 (the request cannot be done: bad JSON, a
// VM that is not paused, a directory that is not empty) or 500, with
// {"fault_message": "..."}.
const (
	apiMaxBody = 64 << 10
	// apiShutdownWait bounds the wait for API requests in progress
	// when the VM ends.
	apiShutdownWait = 5 * time.Second
)

// apiVM is what the API drives.
type apiVM interface {
	Pause() error
	Resume() error
	Paused() bool
	Snapshot(dir string, o vmm.SnapshotOptions) error
	Stop()
	SetBalloon(mib uint64) error
	BalloonConfig() (vmm.Balloon, error)
	BalloonState() (virtio.BalloonState, error)
}

// apiServer serves the VM API on a Unix socket.
type apiServer struct {
	vm   apiVM
	mu   sync.Mutex // one request at a time changes the VM
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// listenAPI listens on path (mode 0600), replacing a stale socket a dead
// vessel left, but never a live one or another kind of file.
func listenAPI(path string) (net.Listener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by another process", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, err
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	return ln, nil
}

// serveAPI starts serving the VM API on path. Close stops it and
// removes the socket.
func serveAPI(path string, vm apiVM) (*apiServer, error) {
	ln, err := listenAPI(path)
	if err != nil {
		return nil, usageErr("--api: %v", err)
	}
	s := &apiServer{vm: vm, ln: ln, done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/vm", s.handleVM)
	mux.HandleFunc("/snapshot/create", s.handleSnapshot)
	mux.HandleFunc("/actions", s.handleActions)
	mux.HandleFunc("/balloon", s.handleBalloon)
	mux.HandleFunc("/balloon/statistics", s.handleBalloonStats)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.done)
		s.srv.Serve(ln)
	}()
	return s, nil
}

// Close waits a bounded time for requests in progress (the answer to a
// stop, say) and removes the socket.
func (s *apiServer) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), apiShutdownWait)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
	<-s.done
}

type apiState struct {
	State string `json:"state"`
}

type apiSnapshot struct {
	SnapshotPath string `json:"snapshot_path"`
}

type apiAction struct {
	ActionType string `json:"action_type"`
}

type apiFault struct {
	FaultMessage string `json:"fault_message"`
}

func apiError(w http.ResponseWriter, code int, format string, a ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(apiFault{FaultMessage: fmt.Sprintf(format, a...)})
}

// decode reads a JSON body strictly: one object, no unknown fields.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, apiMaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		apiError(w, http.StatusBadRequest, "bad request body: %v", err)
		return false
	}
	return true
}

// apiBalloon is the balloon's configuration, as Firecracker's API has
// it (free_page_reporting as in its later versions).
type apiBalloon struct {
	AmountMiB         uint64 `json:"amount_mib"`
	DeflateOnOOM      bool   `json:"deflate_on_oom"`
	StatsPollingIntvS uint64 `json:"stats_polling_interval_s"`
	FreePageReporting bool   `json:"free_page_reporting"`
}

// apiBalloonUpdate is PATCH /balloon's body.
type apiBalloonUpdate struct {
	AmountMiB *uint64 `json:"amount_mib"`
}

// apiBalloonStats is GET /balloon/statistics's answer: Firecracker's
// fields (the guest's statistics only once it reported them), and the
// memory vessel returned to the host.
type apiBalloonStats struct {
	TargetPages        uint32  `json:"target_pages"`
	ActualPages        uint32  `json:"actual_pages"`
	TargetMiB          uint64  `json:"target_mib"`
	ActualMiB          uint64  `json:"actual_mib"`
	SwapIn             *uint64 `json:"swap_in,omitempty"`
	SwapOut            *uint64 `json:"swap_out,omitempty"`
	MajorFaults        *uint64 `json:"major_faults,omitempty"`
	MinorFaults        *uint64 `json:"minor_faults,omitempty"`
	FreeMemory         *uint64 `json:"free_memory,omitempty"`
	TotalMemory        *uint64 `json:"total_memory,omitempty"`
	AvailableMemory    *uint64 `json:"available_memory,omitempty"`
	DiskCaches         *uint64 `json:"disk_caches,omitempty"`
	HugetlbAllocations *uint64 `json:"hugetlb_allocations,omitempty"`
	HugetlbFailures    *uint64 `json:"hugetlb_failures,omitempty"`
	InflatedBytes      uint64  `json:"inflated_bytes"`
	ReportedBytes      uint64  `json:"reported_bytes"`
}

func (s *apiServer) handleBalloon(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch r.Method {
	case http.MethodGet:
		c, err := s.vm.BalloonConfig()
		if err != nil {
			vmErr(w, err)
			return
		}
		writeJSON(w, apiBalloon{AmountMiB: c.TargetMiB, DeflateOnOOM: c.DeflateOnOOM,
			StatsPollingIntvS: uint64(c.StatsInterval / time.Second), FreePageReporting: c.Reporting})
	case http.MethodPatch:
		var u apiBalloonUpdate
		if !decode(w, r, &u) {
			return
		}
		if u.AmountMiB == nil {
			apiError(w, http.StatusBadRequest, "amount_mib is missing")
			return
		}
		if err := s.vm.SetBalloon(*u.AmountMiB); err != nil {
			vmErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		apiError(w, http.StatusMethodNotAllowed, "%s /balloon: use GET or PATCH", r.Method)
	}
}

func (s *apiServer) handleBalloonStats(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		apiError(w, http.StatusMethodNotAllowed, "%s /balloon/statistics: use GET", r.Method)
		return
	}
	st, err := s.vm.BalloonState()
	if err != nil {
		vmErr(w, err)
		return
	}
	out := apiBalloonStats{TargetPages: st.TargetPages, ActualPages: st.ActualPages,
		TargetMiB: uint64(st.TargetPages) << 12 >> 20, ActualMiB: uint64(st.ActualPages) << 12 >> 20,
		InflatedBytes: st.Inflated, ReportedBytes: st.Reported}
	for tag, dst := range map[int]**uint64{
		virtio.BalloonStatSwapIn: &out.SwapIn, virtio.BalloonStatSwapOut: &out.SwapOut,
		virtio.BalloonStatMajorFaults: &out.MajorFaults, virtio.BalloonStatMinorFaults: &out.MinorFaults,
		virtio.BalloonStatFreeMemory: &out.FreeMemory, virtio.BalloonStatTotalMemory: &out.TotalMemory,
		virtio.BalloonStatAvailableMemory: &out.AvailableMemory, virtio.BalloonStatDiskCaches: &out.DiskCaches,
		virtio.BalloonStatHugetlbAllocations: &out.HugetlbAllocations, virtio.BalloonStatHugetlbFailures: &out.HugetlbFailures,
	} {
		if v, ok := st.Stats.Values[tag]; ok {
			*dst = &v
		}
	}
	writeJSON(w, out)
}

// writeJSON answers 200 with v.
func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// vmErr answers a VM operation's error: 400 for what the caller can
// change (a stopped or running VM, a bad directory), 500 otherwise.
func vmErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	if errors.Is(err, vmm.ErrStopped) || errors.Is(err, vmm.ErrNotPaused) || errors.Is(err, vmm.ErrInvalidConfig) || errors.Is(err, vmm.ErrNoBalloon) {
		code = http.StatusBadRequest
	}
	apiError(w, code, "%v", err)
}

func (s *apiServer) handleVM(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch r.Method {
	case http.MethodGet:
		st := apiState{State: "Running"}
		if s.vm.Paused() {
			st.State = "Paused"
		}
		writeJSON(w, st)
	case http.MethodPatch:
		var st apiState
		if !decode(w, r, &st) {
			return
		}
		var err error
		switch st.State {
		case "Paused":
			err = s.vm.Pause()
		case "Resumed":
			err = s.vm.Resume()
		default:
			apiError(w, http.StatusBadRequest, "state %q: want Paused or Resumed", st.State)
			return
		}
		if err != nil {
			vmErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		apiError(w, http.StatusMethodNotAllowed, "%s /vm: use GET or PATCH", r.Method)
	}
}

func (s *apiServer) handleSnapshot(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.Method != http.MethodPut {
		apiError(w, http.StatusMethodNotAllowed, "%s /snapshot/create: use PUT", r.Method)
		return
	}
	var req apiSnapshot
	if !decode(w, r, &req) {
		return
	}
	if req.SnapshotPath == "" {
		apiError(w, http.StatusBadRequest, "snapshot_path is empty")
		return
	}
	if !s.vm.Paused() {
		apiError(w, http.StatusBadRequest, "the VM is not paused: PATCH /vm {\"state\": \"Paused\"} first")
		return
	}
	if err := s.vm.Snapshot(req.SnapshotPath, vmm.SnapshotOptions{Version: version()}); err != nil {
		vmErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *apiServer) handleActions(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut {
		apiError(w, http.StatusMethodNotAllowed, "%s /actions: use PUT", r.Method)
		return
	}
	var a apiAction
	if !decode(w, r, &a) {
		return
	}
	if a.ActionType != "Stop" {
		apiError(w, http.StatusBadRequest, "action_type %q: want Stop", a.ActionType)
		return
	}
	// Stop only asks the vCPUs to leave: it returns at once, and the
	// answer says the VM is stopping (the server closes once it has
	// been sent, see Close).
	s.vm.Stop()
	w.WriteHeader(http.StatusNoContent)
}
