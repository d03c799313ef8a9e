package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/guest/agentproto"
)

// TestConsoleTailCleaned: the guest's console lines in a failure report
// cannot carry terminal escapes or break the report's lines.
func TestConsoleTailCleaned(t *testing.T) {
	var b strings.Builder
	writeConsoleTail(&b, []string{"ok line", "\x1b]0;title\x07\x1b[2Jcleared\rover"})
	got := b.String()
	if strings.ContainsAny(got, "\x1b\x07\r") {
		t.Errorf("control characters passed: %q", got)
	}
	if want := `  | \u001b]0;title\u0007\u001b[2Jcleared over` + "\n"; !strings.HasSuffix(got, want) {
		t.Errorf("report %q, want it to end with %q", got, want)
	}
}

// fakeGuest plays the guest agent over a Unix socket: it dials the
// host's agent socket and hands each request to answer.
type fakeGuest struct {
	t    *testing.T
	sock string
	ctl  net.Conn
	wmu  sync.Mutex
	open []net.Conn // streams it keeps
}

// startGuest accepts a fakeGuest's control connection; answer runs for
// each request, in order.
func startGuest(t *testing.T, answer func(g *fakeGuest, req agentproto.Request)) *container.Agent {
	sock := filepath.Join(t.TempDir(), "agent")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := &fakeGuest{t: t, sock: sock}
	g.ctl = g.dial(agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleControl})
	ag, err := container.Accept(context.Background(), ln)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			var req agentproto.Request
			if agentproto.Read(g.ctl, &req) != nil {
				return
			}
			answer(g, req)
		}
	}()
	t.Cleanup(func() {
		ag.Close()
		g.ctl.Close()
		for _, c := range g.open {
			c.Close()
		}
	})
	return ag
}

func (g *fakeGuest) dial(h agentproto.Hello) net.Conn {
	c, err := net.Dial("unix", g.sock)
	if err != nil {
		g.t.Error(err)
		return nil
	}
	agentproto.Write(c, h)
	return c
}

// streams dials the container's stdout and stderr and keeps them.
func (g *fakeGuest) streams(id string) {
	for _, name := range []string{agentproto.Stdout, agentproto.Stderr} {
		g.open = append(g.open, g.dial(agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleStream,
			Stream: &agentproto.StreamID{Container: id, Name: name}}))
	}
}

func (g *fakeGuest) send(r agentproto.Reply) {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	agentproto.Write(g.ctl, r)
}

// TestRunContainerBounded: each of vessel run's waits on a guest that
// stops answering ends, on its bound or when the run is cancelled (as
// a signal or the VM's end cancels it).
func TestRunContainerBounded(t *testing.T) {
	short := runBounds{agent: time.Minute, request: 50 * time.Millisecond, drain: 50 * time.Millisecond, shutdown: time.Minute}
	long := runBounds{agent: time.Minute, request: time.Minute, drain: time.Minute, shutdown: time.Minute}
	for _, tc := range []struct {
		name   string
		bounds runBounds
		answer func(g *fakeGuest, req agentproto.Request, cancel func())
		want   string // in the error; "" for status 3
	}{
		{"create unanswered", short, func(g *fakeGuest, req agentproto.Request, _ func()) {}, "create: the guest did not answer"},
		{"create cancelled", long, func(g *fakeGuest, req agentproto.Request, cancel func()) { cancel() }, "context canceled"},
		{"no streams", short, func(g *fakeGuest, req agentproto.Request, _ func()) {
			g.send(agentproto.Reply{ID: req.ID})
		}, "stream of c: context deadline exceeded"},
		{"start unanswered", short, func(g *fakeGuest, req agentproto.Request, _ func()) {
			if req.Op == agentproto.OpCreate {
				g.streams(req.Container)
				g.send(agentproto.Reply{ID: req.ID})
			}
		}, "start: the guest did not answer"},
		{"streams kept open", short, func(g *fakeGuest, req agentproto.Request, _ func()) {
			switch req.Op {
			case agentproto.OpCreate:
				g.streams(req.Container)
			case agentproto.OpStart:
				defer g.send(agentproto.Reply{Event: agentproto.EventExit, Container: req.Container, Status: 3})
			}
			g.send(agentproto.Reply{ID: req.ID})
		}, "kept the process's output open"},
		{"exit unreported, cancelled", long, func(g *fakeGuest, req agentproto.Request, cancel func()) {
			switch req.Op {
			case agentproto.OpCreate:
				g.streams(req.Container)
			case agentproto.OpStart:
				defer cancel()
			}
			g.send(agentproto.Reply{ID: req.ID})
		}, "context canceled"},
		{"well behaved", short, func(g *fakeGuest, req agentproto.Request, _ func()) {
			switch req.Op {
			case agentproto.OpCreate:
				g.streams(req.Container)
			case agentproto.OpStart:
				defer func() {
					for _, c := range g.open {
						c.Close()
					}
					g.send(agentproto.Reply{Event: agentproto.EventExit, Container: req.Container, Status: 3})
				}()
			}
			g.send(agentproto.Reply{ID: req.ID})
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ag := startGuest(t, func(g *fakeGuest, req agentproto.Request) { tc.answer(g, req, cancel) })
			p := &runPlan{id: "c", spec: &specs.Spec{}}
			status, err := runContainer(ctx, ag, p, runFlags{}, &runSignals{}, tc.bounds, io.Discard, io.Discard, func() error { return nil })
			if tc.want == "" {
				if err != nil || status != 3 {
					t.Errorf("status %d, %v; want 3", status, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

// TestRunSignals: before the container runs and after it exited, a
// signal stops the VM at once; while it runs, signals go to its process
// and the third terminating one stops the VM.
func TestRunSignals(t *testing.T) {
	got := make(chan agentproto.Request, 8)
	ag := startGuest(t, func(g *fakeGuest, req agentproto.Request) {
		got <- req
		g.send(agentproto.Reply{ID: req.ID})
	})
	for _, tc := range []struct {
		name   string
		ag     *container.Agent
		sigs   []syscall.Signal
		passed int            // signals the process gets
		want   syscall.Signal // the one that stops the VM
	}{
		{"before start", nil, []syscall.Signal{syscall.SIGWINCH, syscall.SIGINT}, 0, syscall.SIGINT},
		{"before start, SIGUSR1", nil, []syscall.Signal{syscall.SIGUSR1}, 0, syscall.SIGUSR1},
		{"running", ag, []syscall.Signal{syscall.SIGINT, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGINT}, 3, syscall.SIGINT},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			sigs := make(chan os.Signal, len(tc.sigs))
			for _, s := range tc.sigs {
				sigs <- s
			}
			forced := make(chan os.Signal, 1)
			var rs runSignals
			rs.forward(tc.ag)
			done := make(chan struct{})
			go func() {
				rs.loop(ctx, sigs, "c", false, time.Minute, func(s os.Signal) { forced <- s })
				close(done)
			}()
			if s := <-forced; s != tc.want {
				t.Errorf("forced by %v, want %v", s, tc.want)
			}
			<-done
			// Each request goes on its own: in any order.
			want := map[int]int{}
			for _, s := range tc.sigs[:tc.passed] {
				want[int(s)]++
			}
			for i := 0; i < tc.passed; i++ {
				r := <-got
				if r.Op != agentproto.OpSignal || want[r.Signal] == 0 {
					t.Errorf("request %+v, want a signal of %v", r, tc.sigs[:tc.passed])
				}
				want[r.Signal]--
			}
		})
	}
	// After the exit: forwarding ended, one signal stops the VM.
	var rs runSignals
	rs.forward(ag)
	rs.forward(nil)
	sigs := make(chan os.Signal, 1)
	sigs <- syscall.SIGTERM
	forced := make(chan os.Signal, 1)
	rs.loop(context.Background(), sigs, "c", false, time.Minute, func(s os.Signal) { forced <- s })
	if s := <-forced; s != syscall.SIGTERM {
		t.Errorf("after the exit: forced by %v, want SIGTERM", s)
	}
}

// envHelper makes the test binary a stand-in for a container's vessel
// process: it ends finishWork after its stdin closes (once it recorded
// the exit, the real one still ends the VM and saves the state), unless
// killed first.
const envHelper = "VESSEL_TEST_VESSEL_PROCESS"

func TestHelperVesselProcess(t *testing.T) {
	if os.Getenv(envHelper) == "" {
		t.Skip("the stand-in for a container's vessel process, run by TestStopBounded")
	}
	io.Copy(io.Discard, os.Stdin)
	time.Sleep(finishWork)
	os.Exit(0)
}

// finishWork is how long the stand-in takes to finish after the exit:
// a stop that does not wait for it returns well before it ends.
const finishWork = 2 * time.Second

// TestStopBounded: vessel stop on a container whose guest never answers
// still stops it: its vessel process is killed and the exit recorded;
// a guest that answers gets its process stopped without that, and stop
// returns once the vessel process ended.
func TestStopBounded(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	for _, tc := range []struct {
		name    string
		answers bool
		kill    time.Duration // the bound after SIGKILL
		killed  bool
	}{
		{"guest never answers", false, 10 * time.Millisecond, true},
		{"guest answers", true, time.Minute, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proc := exec.Command(os.Args[0], "-test.run=^TestHelperVesselProcess$")
			proc.Env = append(os.Environ(), envHelper+"=1")
			finish, err := proc.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			defer finish.Close()
			id := strings.Repeat(fmt.Sprint(len(tc.name)%10), 64)
			st := &container.State{ID: id, Name: strings.ReplaceAll(tc.name, " ", "-"), Status: container.StatusRunning, Created: time.Now()}
			root, err := container.StateRoot()
			if err != nil {
				t.Fatal(err)
			}
			startOwner(t, root, st, proc)
			var waitErr error
			exited := make(chan struct{})
			go func() {
				waitErr = proc.Wait()
				close(exited)
			}()
			defer func() {
				proc.Process.Kill()
				<-exited
			}()
			// The control socket in a directory as vessel run makes it.
			dir, err := os.MkdirTemp("", "vessel-run-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			ln, err := net.Listen("unix", filepath.Join(dir, "ctl.sock"))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			st.Socket = ln.Addr().String()
			if err := st.Save(); err != nil {
				t.Fatal(err)
			}
			// The vessel process's control socket: its guest answers a
			// signal by exiting, and the process records it, or never
			// answers anything.
			var mu sync.Mutex
			exitedC := false
			type wait struct {
				c  net.Conn
				id uint64
			}
			var waits []wait
			answerWaits := func() { // with mu held
				for _, w := range waits {
					agentproto.Write(w.c, agentproto.Reply{ID: w.id, Status: 143})
				}
				waits = nil
			}
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						var h agentproto.Hello
						agentproto.Read(c, &h)
						var req agentproto.Request
						for agentproto.Read(c, &req) == nil {
							if !tc.answers {
								continue
							}
							mu.Lock()
							switch req.Op {
							case agentproto.OpWait:
								waits = append(waits, wait{c, req.ID})
							case agentproto.OpSignal:
								if !exitedC {
									exitedC = true
									if cur, err := container.Find(root, id); err == nil {
										cur.Status, cur.ExitCode = container.StatusExited, 143
										cur.Save()
									}
									finish.Close() // and the vessel process ends
								}
								agentproto.Write(c, agentproto.Reply{ID: req.ID})
							}
							if exitedC {
								answerWaits()
							}
							mu.Unlock()
						}
					}()
				}
			}()
			if err := stopBounded(st, 0, stopBounds{kill: tc.kill, end: time.Minute}); err != nil {
				t.Fatalf("stop: %v", err)
			}
			cur, err := container.Find(root, id)
			if err != nil {
				t.Fatal(err)
			}
			want := 143
			if tc.killed {
				want = 137
			}
			if cur.Status != container.StatusExited || cur.ExitCode != want {
				t.Fatalf("state %s, exit %d; want exited, %d", cur.Status, cur.ExitCode, want)
			}
			if tc.killed {
				if <-exited; waitErr == nil || !strings.Contains(waitErr.Error(), "killed") {
					t.Errorf("the vessel process ended with %v, want killed", waitErr)
				}
				if _, err := os.Stat(dir); !os.IsNotExist(err) {
					t.Errorf("its directory is left behind: %v", err)
				}
			} else {
				select {
				case <-exited:
					if waitErr != nil {
						t.Errorf("the vessel process of a guest that answers: %v, want its own exit", waitErr)
					}
				case <-time.After(finishWork / 2): // to reap it
					t.Errorf("stop returned while the vessel process still ran")
				}
			}
		})
	}
}

// TestDrainExec: waiting for an exec'd process's output after its exit
// ends on a terminating signal, whatever the guest does with the
// streams.
func TestDrainExec(t *testing.T) {
	at := &attached{}
	at.out.Add(1) // an output stream the guest never closes
	defer at.out.Done()
	sigs := make(chan os.Signal, 2)
	sigs <- syscall.SIGWINCH
	sigs <- syscall.SIGINT
	err := drainExec(at, sigs)
	if ee, ok := err.(*exitError); !ok || ee.code != 130 {
		t.Errorf("drainExec = %v, want exit status 130", err)
	}
}
