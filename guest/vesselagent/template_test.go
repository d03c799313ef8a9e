package main

import (
	"bufio"
	"io"
	"os"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselvm/vessel/guest/agentproto"
)

// serveOnce runs serve on a pipe, sends reqs, reads one reply each, ends
// the connection, and returns the replies and whether serve would dial
// the host again.
func serveOnce(t *testing.T, a *agent, reqs ...agentproto.Request) ([]agentproto.Reply, bool) {
	t.Helper()
	toAgent, fromHost := io.Pipe()
	toHost, fromAgent := io.Pipe()
	a.ctl = fromAgent
	redial := make(chan bool, 1)
	go func() { redial <- a.serve(bufio.NewReader(toAgent)) }()
	replies := bufio.NewReader(toHost)
	var out []agentproto.Reply
	for i, r := range reqs {
		r.ID = uint64(i + 1)
		if err := agentproto.Write(fromHost, r); err != nil {
			t.Fatal(err)
		}
		var rep agentproto.Reply
		if err := agentproto.Read(replies, &rep); err != nil {
			t.Fatal(err)
		}
		out = append(out, rep)
	}
	fromHost.CloseWithError(io.ErrUnexpectedEOF) // the restore's reset
	return out, <-redial
}

// An agent told OpTemplate dials again when its connection ends (the
// clone's reset); one that was not, or that has a container, does not
// become a template and ends with its connection.
func TestTemplateAgent(t *testing.T) {
	a := &agent{reaper: newReaper(), containers: map[string]*container{}}
	reps, redial := serveOnce(t, a, agentproto.Request{Op: agentproto.OpTemplate})
	if reps[0].Error != "" || !redial {
		t.Errorf("template agent: reply %+v, redial %v; want ok and a redial", reps[0], redial)
	}
	if _, redial := serveOnce(t, a); redial {
		t.Error("after the clone's first connection, an end is the host's: no redial")
	}
	// A container with nothing made yet: the shutdown at the end has
	// nothing to undo.
	busy := &agent{reaper: newReaper(), containers: map[string]*container{"c": {id: "c", dir: t.TempDir()}}}
	reps, _ = serveOnce(t, busy, agentproto.Request{Op: agentproto.OpTemplate})
	if reps[0].Error == "" {
		t.Error("an agent with a container became a template")
	}
}

// A warm-up container that cannot run fails the template (the host
// then boots its containers' VMs cold, and says why), and leaves
// nothing behind.
func TestTemplateWarmUpFails(t *testing.T) {
	defer func(d string) { warmUpDir = d }(warmUpDir)
	warmUpDir = t.TempDir()
	t.Setenv("PATH", t.TempDir()) // no runc
	a := &agent{reaper: newReaper(), containers: map[string]*container{}}
	spec := &specs.Spec{Process: &specs.Process{Args: []string{"/bin/sh"}}}
	reps, redial := serveOnce(t, a, agentproto.Request{Op: agentproto.OpTemplate, Create: &agentproto.Create{Spec: spec}})
	if !strings.Contains(reps[0].Error, "warm-up: ") || !strings.Contains(reps[0].Error, `"runc"`) || redial {
		t.Errorf("template with a failing warm-up: reply %+v, redial %v; want a warm-up error and no redial", reps[0], redial)
	}
	if left, _ := os.ReadDir(warmUpDir); len(left) != 0 {
		t.Errorf("the warm-up left %v", left)
	}
}
