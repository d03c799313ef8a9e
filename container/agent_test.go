package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselvm/vessel/guest/agentproto"
)

// fakeAgent plays the guest agent: it dials the host's agent socket,
// answers exec with a stdout stream carrying "hi" and then an exit
// event with status 4, and waits with that status.
func fakeAgent(t *testing.T, sock string) {
	dial := func(h agentproto.Hello) net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Error(err)
			return nil
		}
		agentproto.Write(c, h)
		return c
	}
	ctl := dial(agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleControl})
	if ctl == nil {
		return
	}
	defer ctl.Close()
	for {
		var req agentproto.Request
		if agentproto.Read(ctl, &req) != nil {
			return
		}
		rep := agentproto.Reply{ID: req.ID}
		switch req.Op {
		case agentproto.OpExec:
			s := dial(agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleStream,
				Stream: &agentproto.StreamID{Container: req.Container, Exec: req.Exec, Name: agentproto.Stdout}})
			io.WriteString(s, "hi")
			s.Close()
			rep.Pid = 42
			agentproto.Write(ctl, rep)
			agentproto.Write(ctl, agentproto.Reply{Event: agentproto.EventExit, Container: req.Container, Exec: req.Exec, Status: 4})
			continue
		case agentproto.OpWait:
			rep.Status = 4
		default:
			rep.Error, rep.Code = "nope", 127
		}
		agentproto.Write(ctl, rep)
	}
}

// acceptFakeAgent starts fakeAgent on a socket in dir and returns the
// host's end of it, closed when the test ends.
func acceptFakeAgent(t *testing.T, dir string) *Agent {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(dir, "agent"))
	if err != nil {
		t.Fatal(err)
	}
	go fakeAgent(t, filepath.Join(dir, "agent"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ag, err := Accept(ctx, ln)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ag.Close() })
	return ag
}

// TestAgentAndRelay: the host's Agent talks to an agent directly, and a
// Client talks to it through the control socket relay.
func TestAgentAndRelay(t *testing.T) {
	dir := t.TempDir()
	ag := acceptFakeAgent(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Directly.
	if _, err := ag.Call(ctx, agentproto.Request{Op: agentproto.OpStart, Container: "c"}); err == nil {
		t.Error("an error reply came back as success")
	} else if se, ok := err.(*StartError); !ok || se.Code != 127 {
		t.Errorf("error reply: %v, want a StartError with code 127", err)
	}
	r, err := ag.Call(ctx, agentproto.Request{Op: agentproto.OpExec, Container: "c", Exec: "e1"})
	if err != nil || r.Pid != 42 {
		t.Fatalf("exec: %+v, %v", r, err)
	}
	s, err := ag.Stream(ctx, agentproto.StreamID{Container: "c", Exec: "e1", Name: agentproto.Stdout})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(s); string(b) != "hi" {
		t.Errorf("stream carried %q", b)
	}
	if st, err := ag.Wait(ctx, "c", "e1"); err != nil || st != 4 {
		t.Errorf("Wait = %d, %v; want 4", st, err)
	}

	// Through the relay.
	ctlLn, err := net.Listen("unix", filepath.Join(dir, "ctl.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ctlLn.Close()
	go ag.ServeControl(ctlLn)
	c, err := Dial(filepath.Join(dir, "ctl.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out, err := c.Stream(agentproto.StreamID{Container: "c", Exec: "e2", Name: agentproto.Stdout})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := c.Call(ctx, agentproto.Request{Op: agentproto.OpExec, Container: "c", Exec: "e2"}); err != nil || r.Pid != 42 {
		t.Fatalf("relayed exec: %+v, %v", r, err)
	}
	if b, _ := io.ReadAll(out); string(b) != "hi" {
		t.Errorf("relayed stream carried %q", b)
	}
	if r, err := c.Call(ctx, agentproto.Request{Op: agentproto.OpWait, Container: "c", Exec: "e2"}); err != nil || r.Status != 4 {
		t.Errorf("relayed wait: %+v, %v", r, err)
	}
	if _, err := c.Call(ctx, agentproto.Request{Op: agentproto.OpShutdown}); err == nil {
		t.Error("shutdown passed the relay")
	}
}

// TestAgentHostileGuest: duplicate streams and exit events, and more
// unclaimed streams than the host keeps, are dropped instead of
// blocking the agent client.
func TestAgentHostileGuest(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(h agentproto.Hello) net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		agentproto.Write(c, h)
		return c
	}
	ctl := dial(agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleControl})
	defer ctl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ag, err := Accept(ctx, ln)
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	for i := 0; i < 3; i++ {
		agentproto.Write(ctl, agentproto.Reply{Event: agentproto.EventExit, Container: "c", Status: 7 + i})
	}
	var extra []net.Conn
	for i := 0; i < maxPending+20; i++ {
		extra = append(extra, dial(agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleStream,
			Stream: &agentproto.StreamID{Container: "c", Exec: fmt.Sprint(i), Name: agentproto.Stdout}}))
	}
	defer func() {
		for _, c := range extra {
			c.Close()
		}
	}()
	if st, err := ag.Wait(ctx, "c", ""); err != nil || st != 7 {
		t.Errorf("Wait = %d, %v; want the first exit event's 7", st, err)
	}
	// The control connection still works: the reader was never blocked.
	go func() {
		var req agentproto.Request
		if agentproto.Read(ctl, &req) == nil {
			agentproto.Write(ctl, agentproto.Reply{ID: req.ID, Pid: 9})
		}
	}()
	if r, err := ag.Call(ctx, agentproto.Request{Op: agentproto.OpStart, Container: "c"}); err != nil || r.Pid != 9 {
		t.Errorf("call after the flood: %+v, %v", r, err)
	}
	time.Sleep(200 * time.Millisecond) // let the accept loop file what it got
	ag.smu.Lock()
	n := len(ag.streams)
	ag.smu.Unlock()
	if n > maxPending {
		t.Errorf("%d unclaimed streams kept, at most %d expected", n, maxPending)
	}
}

// TestAgentGuestStopsReading: a guest that stops reading its control
// connection cannot hold a call past its context, nor every call after
// it: the write that fills the connection gives up at the deadline and
// the agent counts as gone. (The write had no bound: a SIGKILL from
// vessel-runtime then never returned.)
func TestAgentGuestStopsReading(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	agentproto.Write(c, agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleControl})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ag, err := Accept(ctx, ln)
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	// The guest reads nothing more: requests of 64 KiB fill the
	// connection's buffers within a few calls.
	big := agentproto.Request{Op: agentproto.OpExec, Container: "c", Process: &specs.Process{Env: []string{strings.Repeat("x", 64<<10)}}}
	start := time.Now()
	var last error
	for i := 0; i < 64 && !errors.Is(last, ErrAgentGone); i++ {
		cctx, ccancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, last = ag.Call(cctx, big)
		ccancel()
	}
	if !errors.Is(last, ErrAgentGone) {
		t.Fatalf("after 64 calls to a guest that reads nothing: %v, want the agent gone", last)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the calls took %v", d)
	}
}

// TestAgentCallExpired: a call whose context has already ended sends
// nothing and leaves the connection as it was (a write that timed out
// part-way closes it; one that never started must not).
func TestAgentCallExpired(t *testing.T) {
	ag := acceptFakeAgent(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	expired, cancelExpired := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancelExpired()
	if _, err := ag.Call(expired, agentproto.Request{Op: agentproto.OpWait, Container: "c"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a call with an ended context: %v, want context.DeadlineExceeded", err)
	}
	if r, err := ag.Call(ctx, agentproto.Request{Op: agentproto.OpWait, Container: "c"}); err != nil || r.Status != 4 {
		t.Errorf("the next call: %+v, %v; want the agent's status 4", r, err)
	}
}
