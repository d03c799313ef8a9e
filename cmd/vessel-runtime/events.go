package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	runc "github.com/containerd/go-runc"
	"github.com/spf13/cobra"

	"github.com/vesselvm/vessel/guest/agentproto"
)

// opStats asks a container's VMM process for the container's cgroup
// statistics, which its guest agent reads with the guest's runc.
const opStats = "stats"

// maxStats bounds the statistics a guest may send, encoded: they must
// fit in a control reply (maxCtl) with room to spare. A real
// container's are a few KiB (one counter per CPU, per block device, per
// memory.stat key).
const maxStats = maxCtl / 2

// runcEvent is one line of runc events' output (runc's types.Event).
type runcEvent struct {
	Type string      `json:"type"`
	ID   string      `json:"id"`
	Data *runc.Stats `json:"data,omitempty"`
}

func newEvents(g *globals) *cobra.Command {
	var once bool
	var interval time.Duration
	c := &cobra.Command{
		Use:   "events [--stats] [--interval D] ID",
		Short: "print the container's resource statistics (its cgroup in the VM) as runc events' JSON: once with --stats, else every --interval until it stops",
		Long: `events prints the container's resource statistics as runc events does: one
JSON object per line, {"type":"stats","id":ID,"data":{...}}, with the
CPU, memory, pids, block I/O and hugetlb figures of the container's
cgroup inside its VM, as the guest's runc reads them. With --stats it
prints them once; without, every --interval (the first after one
interval) until the container stops (then it exits 0), a failed read
meanwhile (a paused container) reported on stderr. runc's "oom" events are not reported: an OOM kill
inside the VM shows in the memory figures and the container's exit.`,
		Args: exactID,
		RunE: func(c *cobra.Command, args []string) error {
			if interval <= 0 {
				return errorf("--interval must be positive, not %v", interval)
			}
			return g.events(c.Context(), c.OutOrStdout(), c.ErrOrStderr(), args[0], once, interval)
		},
	}
	c.Flags().BoolVar(&once, "stats", false, "print the statistics once and exit")
	c.Flags().DurationVar(&interval, "interval", 5*time.Second, "how often to print the statistics")
	return c
}

// events prints container id's statistics once, or, as runc events
// does, every interval (the first after one interval) until the
// container stops or ctx ends; a read that fails while the container
// runs (paused, a slow guest) is reported on stderr and the stream goes
// on.
func (g *globals) events(ctx context.Context, w, stderr io.Writer, id string, once bool, interval time.Duration) error {
	if ctx == nil {
		ctx = context.Background()
	}
	enc := json.NewEncoder(w)
	if once {
		st, err := g.stats(id)
		if err != nil {
			return err
		}
		if err := enc.Encode(runcEvent{Type: "stats", ID: id, Data: st}); err != nil {
			return errorf("events: %v", err)
		}
		return nil
	}
	if dir, rec, err := g.load(id); err != nil {
		return err
	} else if rec.status(dir) == statusStopped {
		return errorf("container with id %s is not running", id)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		st, err := g.stats(id)
		if err != nil {
			if g.stoppedOrGone(id) {
				return nil
			}
			fmt.Fprintf(stderr, "vessel-runtime: events: %v\n", err)
			continue
		}
		if err := enc.Encode(runcEvent{Type: "stats", ID: id, Data: st}); err != nil {
			return errorf("events: %v", err)
		}
	}
}

// stats asks container id's VMM process (a pod container's member
// process, which forwards it) for its statistics.
func (g *globals) stats(id string) (*runc.Stats, error) {
	dir, rec, err := g.load(id)
	if err != nil {
		return nil, err
	}
	if !rec.vmmAlive() {
		return nil, errorf("container with id %s is not running", id)
	}
	rep, err := call(dir, ctlRequest{Op: opStats})
	if err != nil {
		return nil, err
	}
	if rep.Stats == nil {
		return nil, errorf("events: the container's VMM sent no statistics")
	}
	return rep.Stats, nil
}

// stoppedOrGone reports whether container id has stopped or been
// deleted.
func (g *globals) stoppedOrGone(id string) bool {
	dir, rec, err := g.load(id)
	return err != nil || rec.status(dir) == statusStopped
}

// statsIn answers a stats request for container id, whose status is st,
// in the VMM process: the guest agent reads them with the guest's runc.
func (p *vmmProc) statsIn(ctx context.Context, id, st string) ctlReply {
	fail := func(format string, args ...any) ctlReply {
		return ctlReply{Status: st, Error: fmt.Sprintf(format, args...)}
	}
	if st == statusPaused || p.getStatus() == statusPaused {
		return fail("container %s is paused: its VM's vCPUs are stopped, and only its guest has the statistics", id)
	}
	if st != statusCreated && st != statusRunning {
		return fail("container with id %s is not running", id)
	}
	rep, err := p.ag.Call(ctx, agentproto.Request{Op: agentproto.OpStats, Container: id})
	if err != nil {
		return fail("%v", p.agentError("stats", err))
	}
	if rep.Stats == nil {
		return fail("stats: the guest sent no statistics")
	}
	// The guest chose every figure and name: names that could carry
	// terminal controls are dropped, and the size is bounded.
	cleanStats(rep.Stats)
	if b, err := json.Marshal(rep.Stats); err != nil || len(b) > maxStats {
		return fail("stats: the guest's statistics are %d bytes, more than %d", len(b), maxStats)
	}
	return ctlReply{Status: st, Stats: rep.Stats}
}

// maxStatName bounds a name in a guest's statistics (a memory.stat key,
// a hugetlb page size, a block I/O operation, an interface).
const maxStatName = 64

// statName reports whether a name from a guest's statistics may be
// printed: 1 to maxStatName bytes of letters, digits and _.:- (what
// cgroup files and interfaces are named with). JSON escapes ASCII
// controls but not C1 controls or bidirectional overrides, which a
// terminal showing events' output would act on.
func statName(s string) bool {
	if s == "" || len(s) > maxStatName {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("_.:-", r):
		default:
			return false
		}
	}
	return true
}

// cleanStats drops the entries of st whose names statName refuses, and
// blanks such block I/O operations.
func cleanStats(st *runc.Stats) {
	for k := range st.Memory.Raw {
		if !statName(k) {
			delete(st.Memory.Raw, k)
		}
	}
	for k := range st.Hugetlb {
		if !statName(k) {
			delete(st.Hugetlb, k)
		}
	}
	b := &st.Blkio
	for _, list := range [][]runc.BlkioEntry{b.IoServiceBytesRecursive, b.IoServicedRecursive, b.IoQueuedRecursive,
		b.IoServiceTimeRecursive, b.IoWaitTimeRecursive, b.IoMergedRecursive, b.IoTimeRecursive, b.SectorsRecursive} {
		for i := range list {
			if list[i].Op != "" && !statName(list[i].Op) {
				list[i].Op = ""
			}
		}
	}
	st.NetworkInterfaces = slices.DeleteFunc(st.NetworkInterfaces, func(n *runc.NetworkInterface) bool {
		return n == nil || !statName(n.Name)
	})
}
