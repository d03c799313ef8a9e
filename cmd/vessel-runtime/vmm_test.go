package main

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/guest/agentproto"
	"github.com/vesselvm/vessel/vmm"
)

// TestStartGuestSilent: a start whose guest agent never answers is
// answered on the control connection with an error naming the silence,
// before the connection's deadline; the caller used to see only the
// connection's end ("the container's VMM: EOF").
func TestStartGuestSilent(t *testing.T) {
	defer func(d time.Duration) { handlerTimeout = d }(handlerTimeout)
	handlerTimeout = 500 * time.Millisecond
	dir := t.TempDir()
	ag := silentAgent(t, dir)
	p := &vmmProc{id: "c", dir: dir, ag: ag, status: statusCreated,
		deleting: make(chan struct{}), ended: make(chan struct{})}
	serveTestControl(t, p)

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

// silentAgent returns the host's end of a guest agent that says hello
// and reads requests, and answers none of them (a hung or hostile
// guest), its socket in dir.
func silentAgent(t *testing.T, dir string) *container.Agent { return guestAgent(t, dir, true, nil) }

// guestAgent returns the host's end of a guest agent that says hello and
// answers nothing, reading the requests or (deaf) not even those; with
// answer, it reads every request and sends answer's reply to it. It
// sends events first, after its hello.
func guestAgent(t *testing.T, dir string, reads bool, answer func(agentproto.Request) agentproto.Reply, events ...agentproto.Reply) *container.Agent {
	t.Helper()
	agentSock := filepath.Join(dir, "agent")
	ln, err := net.Listen("unix", agentSock)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := net.Dial("unix", agentSock)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		agentproto.Write(c, agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleControl})
		for _, e := range events {
			agentproto.Write(c, e)
		}
		for reads {
			var req agentproto.Request
			if agentproto.Read(c, &req) != nil {
				return
			}
			if answer != nil {
				rep := answer(req)
				rep.ID = req.ID
				if agentproto.Write(c, rep) != nil {
					return
				}
			}
		}
		if !reads {
			io.Copy(io.Discard, &blockForever{})
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ag, err := container.Accept(ctx, ln)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ag.Close() })
	return ag
}

// TestKillGuestSilent: SIGKILL to a container whose guest never confirms
// it ends the container anyway (its VM stopped, forceEnd), quickly and
// without an error, as SIGKILL to a runc container's first process
// does; other signals still report the silence. Before, the kill failed
// after handlerTimeout and the container ran on, so docker kill or a
// pod's stop could never end it.
func TestKillGuestSilent(t *testing.T) {
	defer func(h, k time.Duration) { handlerTimeout, killConfirmTimeout = h, k }(handlerTimeout, killConfirmTimeout)
	handlerTimeout, killConfirmTimeout = 3*time.Second, 300*time.Millisecond
	dir := t.TempDir()
	logPath := filepath.Join(dir, "log")
	p := &vmmProc{g: &globals{log: logPath}, id: "c", dir: dir, ag: silentAgent(t, dir), status: statusRunning,
		deleting: make(chan struct{}), ended: make(chan struct{})}
	serveTestControl(t, p)

	if _, err := call(dir, ctlRequest{Op: opKill, Signal: int(syscall.SIGTERM)}); err == nil || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Errorf("SIGTERM with a silent guest: %v, want an error naming the deadline", err)
	}
	if p.wasForced() {
		t.Fatal("SIGTERM ended the container without the guest")
	}
	start := time.Now()
	if _, err := call(dir, ctlRequest{Op: opKill, Signal: int(syscall.SIGKILL)}); err != nil {
		t.Fatalf("SIGKILL with a silent guest: %v, want success", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("SIGKILL answered after %v, want about killConfirmTimeout", d)
	}
	select {
	case <-p.deleting:
	default:
		t.Error("SIGKILL with a silent guest did not end the container")
	}
	if !p.wasForced() {
		t.Error("not marked as ended without the guest")
	}
	if l := readTestFile(t, logPath); !strings.Contains(l, "the VM is stopped instead") {
		t.Errorf("log: %q, want a line saying the VM is stopped", l)
	}
}

// TestKillPaused: SIGKILL to a paused container ends it at once (a
// frozen cgroup's processes die of SIGKILL); another signal waits for
// resume, as it does for a frozen process.
func TestKillPaused(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		p := &vmmProc{g: &globals{}, id: "c", status: statusPaused, deleting: make(chan struct{}), ended: make(chan struct{})}
		rep := p.handle(ctlRequest{Op: opKill, Signal: int(sig)})
		if rep.Error != "" {
			t.Errorf("%v to a paused container: %s", sig, rep.Error)
		}
		ended := false
		select {
		case <-p.deleting:
			ended = true
		default:
		}
		if want := sig == syscall.SIGKILL; ended != want || p.wasForced() != want {
			t.Errorf("%v to a paused container: ended %v, want %v", sig, ended, want)
		}
		if want := sig != syscall.SIGKILL; (len(p.held) == 1) != want {
			t.Errorf("%v to a paused container: held %v", sig, p.held)
		}
	}
}

// TestKillMemberGuestSilent: SIGKILL to a pod's container whose guest
// never confirms it ends that container (its member process is told
// 137, see memberCreate), not the pod's VM.
func TestKillMemberGuestSilent(t *testing.T) {
	defer func(k time.Duration) { killConfirmTimeout = k }(killConfirmTimeout)
	killConfirmTimeout = 300 * time.Millisecond
	dir := t.TempDir()
	logPath := filepath.Join(dir, "log")
	m := &member{id: "m", status: statusRunning, gone: make(chan struct{}), killed: make(chan struct{})}
	p := &vmmProc{g: &globals{log: logPath}, id: "sb", dir: dir, ag: silentAgent(t, dir), status: statusRunning,
		deleting: make(chan struct{}), ended: make(chan struct{}), pod: &podState{members: map[string]*member{"m": m}}}
	if rep := p.handleMember(ctlRequest{Op: opKill, Container: "m", Signal: int(syscall.SIGKILL)}); rep.Error != "" {
		t.Fatalf("SIGKILL with a silent guest: %s", rep.Error)
	}
	select {
	case <-m.killed:
	default:
		t.Error("the pod's container was not ended")
	}
	if p.wasForced() {
		t.Error("the pod's VM was stopped for one of its containers")
	}
	if l := readTestFile(t, logPath); !strings.Contains(l, "container m is ended without the guest") {
		t.Errorf("log: %q", l)
	}
	// A second SIGKILL (containerd repeats it) does no harm.
	p.handleMember(ctlRequest{Op: opKill, Container: "m", Signal: int(syscall.SIGKILL)})
}

// serveTestControl serves p's control socket in p.dir until the test
// ends.
func serveTestControl(t *testing.T, p *vmmProc) {
	t.Helper()
	ctl, err := net.Listen("unix", filepath.Join(p.dir, ctlSock))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	go p.serveControl(ctl)
}

// blockForever is a reader that never returns.
type blockForever struct{}

func (*blockForever) Read([]byte) (int, error) { select {} }

// TestKillWhileWriteBlocked: SIGKILL ends the container within
// killConfirmTimeout even while another request to the guest is stuck
// writing to a control connection the guest stopped reading (that
// write holds the connection for its own, longer time limit).
func TestKillWhileWriteBlocked(t *testing.T) {
	defer func(k time.Duration) { killConfirmTimeout = k }(killConfirmTimeout)
	killConfirmTimeout = 300 * time.Millisecond
	dir := t.TempDir()
	p := &vmmProc{g: &globals{log: filepath.Join(dir, "log")}, id: "c", dir: dir, ag: guestAgent(t, dir, false, nil), status: statusRunning,
		deleting: make(chan struct{}), ended: make(chan struct{})}
	// Requests of 64 KiB the guest never reads, with no deadline of
	// their own: soon one blocks in its write.
	big := agentproto.Request{Op: agentproto.OpExec, Container: "c", Process: &specs.Process{Env: []string{strings.Repeat("x", 64<<10)}}}
	for i := 0; i < 32; i++ {
		go p.ag.Call(context.Background(), big)
	}
	time.Sleep(200 * time.Millisecond)
	done := make(chan ctlReply, 1)
	go func() { done <- p.kill(statusRunning) }()
	select {
	case rep := <-done:
		if rep.Error != "" || !p.wasForced() {
			t.Errorf("SIGKILL: %+v, forced %v; want success and the VM stopped", rep, p.wasForced())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SIGKILL did not return within 5 s while a write to the guest was stuck")
	}
}

func readTestFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestKillHeldForExec: a signal held while the VM is paused keeps the
// exec'd process it is for; on resume it used to go to the container's
// first process.
func TestKillHeldForExec(t *testing.T) {
	p := &vmmProc{g: &globals{}, id: "c", status: statusPaused, deleting: make(chan struct{}), ended: make(chan struct{})}
	if rep := p.handle(ctlRequest{Op: opKill, Signal: int(syscall.SIGHUP), Exec: "e1"}); rep.Error != "" {
		t.Fatal(rep.Error)
	}
	if want := (heldSignal{int(syscall.SIGHUP), "e1"}); len(p.held) != 1 || p.held[0] != want {
		t.Errorf("held %+v, want %+v", p.held, want)
	}
}

// TestDescribeGoroutines: DescribeSignal to a VMM process whose VM has
// ended says so and, with VESSEL_DEBUG, writes every goroutine's stack
// to --log (a VMM process that hangs whatever its guest does shows
// where); the signal keeps being served.
func TestDescribeGoroutines(t *testing.T) {
	t.Setenv(container.DebugEnv, "1")
	dir := t.TempDir()
	logPath := filepath.Join(dir, "log")
	p := &vmmProc{g: &globals{log: logPath}, id: "c", dir: dir, ended: make(chan struct{})}
	close(p.ended)
	sigs := make(chan os.Signal, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.describeOnSignal(nil, sigs)
	}()
	// Its last lines written before the test's directory goes.
	defer func() { <-done }()
	defer close(sigs)
	for i := 1; i <= 2; i++ {
		sigs <- syscall.SIGUSR2
		deadline := time.Now().Add(10 * time.Second)
		for {
			b, _ := os.ReadFile(logPath)
			if strings.Count(string(b), goroutinesHeader) >= i {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("signal %d: log %q, want the goroutines", i, b)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	l := readTestFile(t, logPath)
	if !strings.Contains(l, "no description of its VM: it has ended") || !strings.Contains(l, "describeOnSignal") {
		t.Errorf("log: %q", l)
	}
}

// TestExitOutputHeldOpen: a guest that reports the container's exit but
// holds an output stream open (broken or hostile) cannot keep the
// container from ending: the VMM process exits with the reported status
// after outputsWait, and says why. Before, it waited for the stream
// forever, and its caller (a shim, docker) with it.
func TestExitOutputHeldOpen(t *testing.T) {
	defer func(d time.Duration) { outputsWait = d }(outputsWait)
	outputsWait = 200 * time.Millisecond
	dir := t.TempDir()
	logPath := filepath.Join(dir, "log")
	ag := guestAgent(t, dir, true, func(agentproto.Request) agentproto.Reply { return agentproto.Reply{} },
		agentproto.Reply{Event: agentproto.EventExit, Container: "c", Status: 3})
	p := &vmmProc{g: &globals{log: logPath}, id: "c", dir: dir, ag: ag, status: statusRunning,
		deleting: make(chan struct{}), ended: make(chan struct{})}
	close(p.ended) // the VM's end, for teardown
	// A stdout stream the guest never ends.
	host, guest := net.Pipe()
	defer guest.Close()
	outputs.copy(io.Discard, host)
	defer outputs.wg.Wait() // the copy ends: wait() closed its stream
	wantWait(t, p, 3, "the container did not end while the guest held its output open")
	if l := readTestFile(t, logPath); !strings.Contains(l, "output streams did not end") {
		t.Errorf("log: %q", l)
	}
	// The stream was closed: its copy ended, nothing is left behind.
	guest.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := guest.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the guest's end of the held stream: %v, want EOF (the host closed it)", err)
	}
}

// TestWaitOutputs: output copies that end are waited for; ones the guest
// holds open are given up after outputsWait, or at most vmEndGrace
// after the VM's end, and closed.
func TestWaitOutputs(t *testing.T) {
	defer func(d time.Duration) { outputsWait = d }(outputsWait)
	outputsWait = 300 * time.Millisecond
	for _, tc := range []struct {
		name       string
		guestEnds  bool
		vmEnded    bool
		want       bool
		maxSeconds float64
	}{
		{"ended", true, false, true, 1},
		{"held open", false, false, false, 1},
		{"held open, VM ended", false, true, false, 1 + vmEndGrace.Seconds()},
	} {
		var o outputSet
		host, guest := net.Pipe()
		o.copy(io.Discard, host)
		if tc.guestEnds {
			guest.Close()
		}
		ended := make(chan struct{})
		if tc.vmEnded {
			close(ended)
			outputsWait = time.Hour
		}
		start := time.Now()
		if got := waitOutputs(&o, nil, ended); got != tc.want {
			t.Errorf("%s: waitOutputs = %v, want %v", tc.name, got, tc.want)
		}
		if d := time.Since(start).Seconds(); d > tc.maxSeconds {
			t.Errorf("%s: took %.1f s", tc.name, d)
		}
		o.wg.Wait() // the copy has ended either way
		guest.Close()
		outputsWait = 300 * time.Millisecond
	}
}

// TestVMEndsFirst: a container whose VM ends (a guest crash, a triple
// fault) before the guest reports its exit ends with it, status 255 and
// a line saying how; its VMM process used to wait for an exit no guest
// would ever report, and docker or the shim with it.
func TestVMEndsFirst(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "log")
	p := &vmmProc{g: &globals{log: logPath}, id: "c", dir: dir, ag: silentAgent(t, dir), status: statusRunning,
		deleting: make(chan struct{}), ended: make(chan struct{})}
	close(p.ended)
	wantWait(t, p, 255, "the container did not end with its VM")
	if l := readTestFile(t, logPath); !strings.Contains(l, "container c: its VM ended before it did") {
		t.Errorf("log: %q", l)
	}
}

// wantWait runs p.wait and wants it to end within 10 s with status
// want; hung says what it means if it does not.
func wantWait(t *testing.T, p *vmmProc, want exitCode, hung string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.wait() }()
	select {
	case err := <-done:
		if code, ok := err.(exitCode); !ok || code != want {
			t.Errorf("wait = %v, want exit status %d", err, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal(hung)
	}
}

// TestExitCodeWaitFailed: a container whose guest wait failed ends with
// 255 and one line on its stderr saying why: that its VM ended when it
// ends within vmEndGrace (the agent's connection goes a moment before
// the VM's end is seen) or ended with no exit reported (endedFirst),
// else the wait's error; 137 and nothing on stderr when SIGKILL stopped
// the VM meanwhile.
func TestExitCodeWaitFailed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		end    bool // the VM ends 100 ms after the failed wait
		forced bool // by SIGKILL (forceEnd)
		want   int
		line   string // stderr, "" for nothing
		noExit bool   // no wait returned: the VM ended first (endedFirst)
	}{
		{"the VM ends", true, false, 255, "vessel-runtime: container c: its VM ended before it did (the VM ended: triple fault)\n", false},
		{"SIGKILL stops the VM", true, true, 137, "", false},
		{"the VM runs on", false, false, 255, "vessel-runtime: container c: agent gone\n", false},
		{"the VM ends, no exit reported", true, false, 255, "vessel-runtime: container c: its VM ended before it did (the VM ended: triple fault)\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			stderr := os.Stderr
			os.Stderr = w
			defer func() { os.Stderr = stderr }()
			p := &vmmProc{g: &globals{}, id: "c", deleting: make(chan struct{}), ended: make(chan struct{})}
			if tc.end {
				go func() {
					time.Sleep(100 * time.Millisecond)
					p.mu.Lock()
					p.forced = tc.forced
					p.mu.Unlock()
					p.result = vmm.Result{Kind: vmm.ExitTripleFault, Detail: "triple fault"}
					close(p.ended)
				}()
			}
			var got int
			if tc.noExit {
				got = p.endedFirst(make(chan exit))
			} else {
				got = p.exitCode(0, errors.New("agent gone"))
			}
			w.Close()
			out, _ := io.ReadAll(r)
			if got != tc.want || string(out) != tc.line {
				t.Errorf("exit %d, stderr %q; want %d, %q", got, out, tc.want, tc.line)
			}
		})
	}
}
