package main

import (
	"encoding/json"
	"math"
	"os"
	"sync"
	"time"

	"github.com/vesselvm/vessel/guest/agentproto"
)

// runPhases times the steps of one `vessel run` for --metrics: where a
// container's start-up and teardown go (issue 13: host set-up, boot or
// restore to agent, create, start, the container's run, teardown).
type runPhases struct {
	mu       sync.Mutex
	start    time.Time
	last     time.Time
	restored bool
	phases   []runPhase
}

// runPhase is one step and how long it took.
type runPhase struct {
	Name string  `json:"name"`
	MS   float64 `json:"ms"`
	// Guest is the guest agent's own account of the step's parts, as
	// it reported them (agentproto.Reply.Steps): a hostile guest can
	// only make its own run's metrics wrong, and guestSteps bounds what
	// it can put in the file.
	Guest []runPhase `json:"guest,omitempty"`
}

func newRunPhases() *runPhases {
	now := time.Now()
	return &runPhases{start: now, last: now}
}

// mark ends the step called name, begun at the previous mark; guest are
// the parts of it the guest agent reported.
func (r *runPhases) mark(name string, guest ...agentproto.Step) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.phases = append(r.phases, runPhase{Name: name, MS: float64(now.Sub(r.last).Microseconds()) / 1000, Guest: guestSteps(guest)})
	r.last = now
}

// guestSteps keeps at most agentproto.MaxSteps of a guest's steps, with
// names of at most 16 lowercase letters and times that are finite and
// not negative; it drops the rest.
func guestSteps(steps []agentproto.Step) []runPhase {
	var out []runPhase
	for _, s := range steps {
		if len(out) == agentproto.MaxSteps {
			break
		}
		if !stepName(s.Name) || math.IsNaN(s.MS) || math.IsInf(s.MS, 0) || s.MS < 0 {
			continue
		}
		out = append(out, runPhase{Name: s.Name, MS: s.MS})
	}
	return out
}

// stepName reports whether s is 1-16 lowercase ASCII letters.
func stepName(s string) bool {
	if len(s) == 0 || len(s) > 16 {
		return false
	}
	for _, c := range []byte(s) {
		if c < 'a' || c > 'z' {
			return false
		}
	}
	return true
}

// write writes the steps as JSON: {"restored": ..., "phases": [...],
// "total_ms": ...}.
func (r *runPhases) write(path string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := json.MarshalIndent(struct {
		Restored bool       `json:"restored"`
		Phases   []runPhase `json:"phases"`
		TotalMS  float64    `json:"total_ms"`
	}{r.restored, r.phases, float64(time.Since(r.start).Microseconds()) / 1000}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// setRestored records whether the VM was restored from a template.
func (r *runPhases) setRestored(v bool) {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.restored = v
	r.mu.Unlock()
}
