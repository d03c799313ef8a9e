package container

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Sentinel errors for container lookups.
var (
	// ErrNoContainer: no container has that ID (prefix) or name.
	ErrNoContainer = errors.New("no such container")
	// ErrNameInUse: another container already has the name.
	ErrNameInUse = errors.New("the container name is already in use")
)

// Container statuses.
const (
	StatusCreated = "created"
	StatusRunning = "running"
	StatusExited  = "exited"
)

// State is what vessel records of a container on the host, in
// <StateRoot>/<id>/state.json, for ps, logs, exec, stop and rm. The
// process that runs the container's VM (vessel run, in the foreground
// or detached with -d) keeps it up to date and serves the container's
// control socket (Dir/ctl.sock) while it runs.
type State struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Image    string    `json:"image"`
	Command  []string  `json:"command"`
	Created  time.Time `json:"created"`
	Status   string    `json:"status"`
	ExitCode int       `json:"exit_code"`
	Finished time.Time `json:"finished,omitempty"`
	// Pid is the vessel process running the VM, and Socket its control
	// socket (agentproto, relayed to the guest agent).
	Pid    int    `json:"pid"`
	Socket string `json:"socket,omitempty"`
	// Process is the container process's configuration: exec starts
	// from its environment and working directory.
	Process *specs.Process `json:"process"`
	// Remove: the container is removed when it exits (--rm).
	Remove bool `json:"remove,omitempty"`
	// Scratch is the host file of the container's scratch disk
	// (--disk-size), removed with the container.
	Scratch string `json:"scratch,omitempty"`

	dir string
}

// StateRoot returns where container states live:
// $XDG_RUNTIME_DIR/vessel/containers, or /run/vessel/containers for root
// without XDG_RUNTIME_DIR, or a directory under the temporary directory.
func StateRoot() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "vessel", "containers")
	}
	if os.Geteuid() == 0 {
		return "/run/vessel/containers"
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("vessel-%d", os.Geteuid()), "containers")
}

// Dir is the container's state directory.
func (s *State) Dir() string { return s.dir }

// LogPath is the container's output log (see LogWriter).
func (s *State) LogPath() string { return filepath.Join(s.dir, "log.json") }

// Running reports whether the container's vessel process still runs it;
// a state that says running but whose process is gone (killed) counts
// as exited.
func (s *State) Running() bool {
	if s.Status != StatusRunning || s.Pid <= 0 {
		return false
	}
	return syscall.Kill(s.Pid, 0) == nil || errors.Is(syscall.Kill(s.Pid, 0), syscall.EPERM)
}

// Create makes the state directory of a new container under root and
// saves s there. A name another container has is ErrNameInUse.
func Create(root string, s *State) error {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("container state: %w", err)
	}
	all, err := List(root)
	if err != nil {
		return err
	}
	for _, o := range all {
		if o.Name == s.Name {
			return fmt.Errorf("%w: %q (by %s)", ErrNameInUse, s.Name, o.ID[:12])
		}
	}
	s.dir = filepath.Join(root, s.ID)
	if err := os.Mkdir(s.dir, 0o700); err != nil {
		return fmt.Errorf("container state: %w", err)
	}
	return s.Save()
}

// Save writes s atomically.
//
// The file is rewritten by the container's vessel process only.
func (s *State) Save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(s.dir, ".state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("container state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, "state.json")); err != nil {
		return fmt.Errorf("container state: %w", err)
	}
	return nil
}

// Delete removes the container's state directory and scratch disk.
func (s *State) Delete() error {
	if s.Scratch != "" {
		if err := os.Remove(s.Scratch); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("container %s: %w", s.ID, err)
		}
	}
	return os.RemoveAll(s.dir)
}

// List returns every container under root, newest first. Directories
// without a readable state (one being created) are skipped.
func List(root string) ([]*State, error) {
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("container state: %w", err)
	}
	var l []*State
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "state.json"))
		if err != nil {
			continue
		}
		s := &State{}
		if json.Unmarshal(b, s) != nil || s.ID != e.Name() {
			continue
		}
		s.dir = dir
		l = append(l, s)
	}
	sort.Slice(l, func(i, j int) bool { return l[i].Created.After(l[j].Created) })
	return l, nil
}

// Find returns the container with that name, or whose ID starts with
// ref (a unique prefix).
func Find(root, ref string) (*State, error) {
	all, err := List(root)
	if err != nil {
		return nil, err
	}
	var match []*State
	for _, s := range all {
		if s.Name == ref {
			return s, nil
		}
		if ref != "" && strings.HasPrefix(s.ID, ref) {
			match = append(match, s)
		}
	}
	switch len(match) {
	case 1:
		return match[0], nil
	case 0:
		return nil, fmt.Errorf("%w: %s", ErrNoContainer, ref)
	}
	return nil, fmt.Errorf("%w: %s matches %d containers", ErrNoContainer, ref, len(match))
}
