package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselvm/vessel/internal/atomicfile"
)

// Container statuses, runtime-spec's (podman refuses any other).
const (
	statusCreating = "creating"
	statusCreated  = "created"
	statusRunning  = "running"
	statusStopped  = "stopped"
)

// record is what the state directory keeps about a container:
// root/ID/state.json. Pid and StartTime are the VMM process's, so that a
// PID the kernel has given to another process is not taken for it.
type record struct {
	ID          string            `json:"id"`
	Bundle      string            `json:"bundle"`
	Created     time.Time         `json:"created"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Pid         int               `json:"pid,omitempty"`
	StartTime   uint64            `json:"start_time,omitempty"`
	// Hooks are the bundle's, kept for start (poststart) and delete
	// (poststop): the bundle may be gone by then.
	Hooks *specs.Hooks `json:"hooks,omitempty"`
	// Sandbox, for a pod's container, is its sandbox's ID: Pid is then
	// the container's member process (see pod.go).
	Sandbox string `json:"sandbox,omitempty"`
	// Netns is the network namespace path the spec gave, if any (a pod's
	// containers name their sandbox's).
	Netns string `json:"netns,omitempty"`
	// Cgroup is the VMM process's host cgroup (cgroup.go), if any.
	Cgroup *hostCgroup `json:"cgroup,omitempty"`
	// Template is the snapshot of the template (template.go) the VMM
	// process restores the VM from, if any; it boots the VM without.
	Template string `json:"template,omitempty"`
}

// ociState is runtime-spec's state, with runc's extra created field.
type ociState struct {
	OCIVersion  string            `json:"ociVersion"`
	ID          string            `json:"id"`
	Status      string            `json:"status"`
	Pid         int               `json:"pid"`
	Bundle      string            `json:"bundle"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Created     time.Time         `json:"created"`
}

// Files in a container's state directory. The sockets' names are short:
// a Unix socket's path has at most 107 bytes.
const (
	stateFile = "state.json"
	ctlSock   = "ctl"
	vsockBase = "v" // the vsock device's host side: v_<port>
)

// validID is runc's rule for container IDs, bounded as the guest agent
// bounds them: letters, digits and _ . - (not first), at most 128.
func validID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i, r := range id {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || i > 0 && strings.ContainsRune("_.-", r)
		if !ok {
			return false
		}
	}
	return true
}

// containerDir returns ID's state directory, after checking the ID.
func (g *globals) containerDir(id string) (string, error) {
	if !validID(id) {
		return "", errorf("invalid container id %q: want letters, digits and _.- (not first), at most 128", id)
	}
	return filepath.Join(g.root, id), nil
}

// load reads a container's record; a container that does not exist is
// runc's error.
func (g *globals) load(id string) (string, *record, error) {
	dir, err := g.containerDir(id)
	if err != nil {
		return "", nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil, errorf("container %q does not exist", id)
	}
	if err != nil {
		return "", nil, errorf("container %q: %v", id, err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil || r.ID != id {
		return "", nil, errorf("container %q: state file %s is damaged", id, filepath.Join(dir, stateFile))
	}
	return dir, &r, nil
}

// save writes the record atomically.
func (r *record) save(dir string) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, stateFile), b, 0o600, false); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return nil
}

// procStartTime returns a live process's start time (field 22 of
// /proc/PID/stat, in clock ticks since boot); ok is false for a process
// that does not exist or has exited (a zombie).
func procStartTime(pid int) (uint64, bool) {
	if pid <= 0 {
		return 0, false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	return parseStat(b)
}

// parseStat reads the state and start time from /proc/PID/stat; the
// command name (field 2) may hold spaces and parentheses, so fields are
// counted from its last ')'.
func parseStat(b []byte) (uint64, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), f[19] field 22 (starttime).
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0, false
	}
	t, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, false
	}
	return t, true
}

// vmmAlive reports whether the record's VMM process still runs.
func (r *record) vmmAlive() bool {
	t, ok := procStartTime(r.Pid)
	return ok && t == r.StartTime
}

// status asks the VMM for the container's status; a VMM that is gone
// means a stopped container, one that has no PID yet a creating one.
func (r *record) status(dir string) string {
	if r.Pid == 0 {
		return statusCreating
	}
	if !r.vmmAlive() {
		return statusStopped
	}
	rep, err := call(dir, ctlRequest{Op: opState})
	if err != nil {
		// Alive but not answering: it is ending, or not serving yet.
		if r.vmmAlive() {
			return statusCreating
		}
		return statusStopped
	}
	return rep.Status
}

// waitGone waits until the VMM process has exited, at most d; it
// reports whether it has.
func (r *record) waitGone(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for r.vmmAlive() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// kill sends the VMM process sig, if it is still the VMM.
func (r *record) kill(sig syscall.Signal) {
	if r.vmmAlive() {
		syscall.Kill(r.Pid, sig)
	}
}
