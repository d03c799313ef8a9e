package main

import (
	"encoding/json"
	"os"
	"sync"
	"time"
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
}

func newRunPhases() *runPhases {
	now := time.Now()
	return &runPhases{start: now, last: now}
}

// mark ends the step called name, begun at the previous mark.
func (r *runPhases) mark(name string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.phases = append(r.phases, runPhase{Name: name, MS: float64(now.Sub(r.last).Microseconds()) / 1000})
	r.last = now
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
