package main

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/guest/agentproto"
)

// TestStartGuestSilent: a start whose guest agent never answers is
// answered on the control connection with an error naming the silence,
// before the connection's deadline; the caller used to see only the
// connection's end ("the container's VMM: EOF").
func TestStartGuestSilent(t *testing.T) {
	defer func(d time.Duration) { handlerTimeout = d }(handlerTimeout)
	handlerTimeout = 500 * time.Millisecond
	dir := t.TempDir()
	agentSock := filepath.Join(dir, "agent")
	ln, err := net.Listen("unix", agentSock)
	if err != nil {
		t.Fatal(err)
	}
	// The guest's agent: it says hello and reads requests, and answers
	// none of them.
	go func() {
		c, err := net.Dial("unix", agentSock)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		agentproto.Write(c, agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleControl})
		for {
			var req agentproto.Request
			if agentproto.Read(c, &req) != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ag, err := container.Accept(ctx, ln)
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	p := &vmmProc{id: "c", dir: dir, ag: ag, status: statusCreated,
		deleting: make(chan struct{}), ended: make(chan struct{})}
	ctl, err := net.Listen("unix", filepath.Join(dir, ctlSock))
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	go p.serveControl(ctl)

	type result struct {
		rep ctlReply
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := call(dir, ctlRequest{Op: opStart})
		done <- result{rep, err}
	}()
	select {
	case r := <-done:
		if r.err == nil || !strings.Contains(r.err.Error(), "start: ") || !strings.Contains(r.err.Error(), "deadline exceeded") {
			t.Errorf("start with a silent agent: %v, want an error reply naming the deadline", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("start with a silent agent: no reply within 10 s (the handler outlives the connection)")
	}
}
