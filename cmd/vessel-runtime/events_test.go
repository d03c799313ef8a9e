package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	runc "github.com/containerd/go-runc"

	"github.com/vesselvm/vessel/guest/agentproto"
)

// eventsContainer makes container "c" in a new root whose VMM process
// (this test's vmmProc, with status st) has a guest agent that answers
// stats requests with stats(n), n counting the requests from 1.
func eventsContainer(t *testing.T, st string, stats func(n int) agentproto.Reply) (root string, p *vmmProc) {
	t.Helper()
	root = t.TempDir()
	dir := filepath.Join(root, "c")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	start, ok := procStartTime(os.Getpid())
	if !ok {
		t.Fatal("no start time of this process")
	}
	rec := &record{ID: "c", Bundle: "/b", Pid: os.Getpid(), StartTime: start}
	if err := rec.save(dir); err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	ag := guestAgent(t, dir, true, func(req agentproto.Request) agentproto.Reply {
		if req.Op != agentproto.OpStats || req.Container != "c" {
			return agentproto.Reply{Error: fmt.Sprintf("unexpected %s of %q", req.Op, req.Container)}
		}
		return stats(int(n.Add(1)))
	})
	p = &vmmProc{g: &globals{}, id: "c", dir: dir, ag: ag, status: st,
		deleting: make(chan struct{}), ended: make(chan struct{})}
	serveTestControl(t, p)
	return root, p
}

func guestStats(pids uint64) agentproto.Reply {
	return agentproto.Reply{Stats: &runc.Stats{Pids: runc.Pids{Current: pids, Limit: 100},
		Memory: runc.Memory{Usage: runc.MemoryEntry{Usage: 3 << 20, Limit: 256 << 20}}}}
}

// TestEventsStats: events --stats prints the guest's statistics once, as
// runc events --stats does: {"type":"stats","id":ID,"data":{...}}.
func TestEventsStats(t *testing.T) {
	root, _ := eventsContainer(t, statusRunning, func(int) agentproto.Reply { return guestStats(2) })
	var stderr bytes.Buffer
	out := captureStdout(t, func() {
		if code := run([]string{"--root", root, "events", "--stats", "c"}, &stderr); code != 0 {
			t.Errorf("exit %d: %s", code, stderr.String())
		}
	})
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(out, &raw); err != nil {
		t.Fatalf("%q: %v", out, err)
	}
	var ev runcEvent
	json.Unmarshal(out, &ev)
	if string(raw["type"]) != `"stats"` || ev.ID != "c" || ev.Data == nil || ev.Data.Pids.Current != 2 || ev.Data.Memory.Usage.Usage != 3<<20 {
		t.Errorf("events --stats printed %s", out)
	}
	if bytes.Count(out, []byte("\n")) != 1 {
		t.Errorf("events --stats printed %d lines, want 1: %s", bytes.Count(out, []byte("\n")), out)
	}
}

// TestEventsStream: without --stats, events prints the statistics every
// interval and ends, status 0, when the container stops.
func TestEventsStream(t *testing.T) {
	var p *vmmProc
	root, p := eventsContainer(t, statusRunning, func(n int) agentproto.Reply {
		if n == 3 {
			p.setStatus(statusStopped)
			return agentproto.Reply{Error: "container not running"}
		}
		return guestStats(uint64(n))
	})
	var stderr bytes.Buffer
	out := captureStdout(t, func() {
		if code := run([]string{"--root", root, "events", "--interval", "20ms", "c"}, &stderr); code != 0 {
			t.Errorf("exit %d: %s", code, stderr.String())
		}
	})
	sc := bufio.NewScanner(bytes.NewReader(out))
	var got []uint64
	for sc.Scan() {
		var ev runcEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil || ev.Type != "stats" || ev.Data == nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got = append(got, ev.Data.Pids.Current)
	}
	if fmt.Sprint(got) != "[1 2]" {
		t.Errorf("events printed pids %v, want [1 2] and then the end", got)
	}
}

// TestEventsRefused: statistics a guest cannot or must not give are one
// error line: a paused VM, a stopped container, an agent that refuses,
// and statistics too large to pass on (a hostile guest's).
func TestEventsRefused(t *testing.T) {
	huge := guestStats(1)
	huge.Stats.Memory.Raw = map[string]uint64{}
	for i := 0; i < 4000; i++ {
		huge.Stats.Memory.Raw[fmt.Sprintf("key%06d", i)] = uint64(i)
	}
	for _, tc := range []struct {
		name  string
		st    string
		reply agentproto.Reply
		want  string
	}{
		{"paused", statusPaused, guestStats(1), "is paused"},
		{"stopped", statusStopped, guestStats(1), "container with id c is not running"},
		{"old agent", statusRunning, agentproto.Reply{Error: `unknown operation "stats"`}, `unknown operation "stats"`},
		{"no statistics", statusRunning, agentproto.Reply{}, "the guest sent no statistics"},
		{"too large", statusRunning, huge, "more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, _ := eventsContainer(t, tc.st, func(int) agentproto.Reply { return tc.reply })
			var stderr bytes.Buffer
			out := captureStdout(t, func() {
				if code := run([]string{"--root", root, "events", "--stats", "c"}, &stderr); code != 1 {
					t.Errorf("exit %d, want 1", code)
				}
			})
			if len(out) != 0 || !strings.Contains(stderr.String(), tc.want) || strings.Count(stderr.String(), "\n") != 1 {
				t.Errorf("stdout %q, stderr %q; want one line naming %q", out, stderr.String(), tc.want)
			}
		})
	}
	var stderr bytes.Buffer
	if code := run([]string{"--root", t.TempDir(), "events", "--interval", "0s", "c"}, &stderr); code != 1 || !strings.Contains(stderr.String(), "--interval must be positive") {
		t.Errorf("--interval 0: exit %d, %q", code, stderr.String())
	}
}

// TestEventsCleanNames: names in a guest's statistics that could carry
// terminal controls (JSON escapes ASCII controls, not C1 controls or
// bidirectional overrides) never reach events' output.
func TestEventsCleanNames(t *testing.T) {
	root, _ := eventsContainer(t, statusRunning, func(int) agentproto.Reply {
		r := guestStats(1)
		r.Stats.Memory.Raw = map[string]uint64{"\u009b2J\u009b31mPWNED\u202e": 1, "anon": 4096, strings.Repeat("k", 65): 2}
		r.Stats.Hugetlb = map[string]runc.Hugetlb{"2MB": {Usage: 1}, "\u202e": {Usage: 2}}
		r.Stats.Blkio.IoServiceBytesRecursive = []runc.BlkioEntry{{Major: 254, Op: "Read", Value: 1}, {Op: "\u009bX", Value: 2}}
		r.Stats.NetworkInterfaces = []*runc.NetworkInterface{{Name: "eth0"}, {Name: "e\u009bth"}, nil}
		return r
	})
	var stderr bytes.Buffer
	out := captureStdout(t, func() {
		if code := run([]string{"--root", root, "events", "--stats", "c"}, &stderr); code != 0 {
			t.Errorf("exit %d: %s", code, stderr.String())
		}
	})
	if bytes.ContainsAny(out, "\u009b\u202e") || bytes.Contains(out, []byte("kkkkkkkkkk")) {
		t.Errorf("guest names with terminal controls or too long in the output: %q", out)
	}
	var ev runcEvent
	if err := json.Unmarshal(out, &ev); err != nil || ev.Data.Memory.Raw["anon"] != 4096 || ev.Data.Hugetlb["2MB"].Usage != 1 ||
		len(ev.Data.Blkio.IoServiceBytesRecursive) != 2 || ev.Data.Blkio.IoServiceBytesRecursive[0].Op != "Read" ||
		len(ev.Data.NetworkInterfaces) != 1 {
		t.Errorf("the clean names were not all kept: %s (%v)", out, err)
	}
}

// TestEventsStreamPaused: as runc events, the stream reports a failed
// read of a container that still runs (here paused) on stderr and goes
// on; it ends, status 0, when the container stops.
func TestEventsStreamPaused(t *testing.T) {
	var p *vmmProc
	root, p := eventsContainer(t, statusRunning, func(n int) agentproto.Reply {
		switch n {
		case 1:
			p.setStatus(statusPaused) // the next read fails without asking the guest
		case 2:
			p.setStatus(statusStopped)
			return agentproto.Reply{Error: "container not running"}
		}
		return guestStats(uint64(n))
	})
	go func() {
		// Resumed once the paused read has failed.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if p.getStatus() == statusPaused {
				time.Sleep(200 * time.Millisecond)
				p.setStatus(statusRunning)
				return
			}
		}
	}()
	var stderr bytes.Buffer
	out := captureStdout(t, func() {
		if code := run([]string{"--root", root, "events", "--interval", "20ms", "c"}, &stderr); code != 0 {
			t.Errorf("exit %d: %s", code, stderr.String())
		}
	})
	if n := bytes.Count(out, []byte(`"type":"stats"`)); n != 1 {
		t.Errorf("%d stats events, want 1: %s", n, out)
	}
	if !strings.Contains(stderr.String(), "is paused") {
		t.Errorf("stderr %q, want the paused read reported", stderr.String())
	}
}
