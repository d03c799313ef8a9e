package container

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vesselvm/vessel/guest/agentproto"
)

// pipeListener is a listener whose connections are net.Pipes the test
// makes with dial; it notes the order in which the host closes them or
// reads past their 4-byte header.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
	seen   chan int // the index of each connection the host closed or read a body of
	next   int
}

func newPipeListener(n int) *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{}), seen: make(chan int, n)}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.UnixAddr{Name: "pipe", Net: "unix"} }

// dial makes a connection and waits until the host accepted it.
func (l *pipeListener) dial(t *testing.T) net.Conn {
	host, guest := net.Pipe()
	w := &watchedConn{Conn: host, i: l.next, seen: l.seen}
	l.next++
	select {
	case l.conns <- w:
	case <-time.After(time.Minute):
		t.Fatal("the host does not accept connections any more")
	}
	return guest
}

// watchedConn reports once on seen when the host closes it or reads
// past the frame header.
type watchedConn struct {
	net.Conn
	i    int
	n    int
	once sync.Once
	seen chan int
}

func (w *watchedConn) Read(p []byte) (int, error) {
	if w.n >= 4 {
		w.once.Do(func() { w.seen <- w.i })
	}
	m, err := w.Conn.Read(p)
	w.n += m
	return m, err
}

func (w *watchedConn) Close() error {
	w.once.Do(func() { w.seen <- w.i })
	return w.Conn.Close()
}

// waitSeen waits for n reports from the host's side of l.
func waitSeen(t *testing.T, l *pipeListener, n int) []int {
	var got []int
	for len(got) < n {
		select {
		case i := <-l.seen:
			got = append(got, i)
		case <-time.After(time.Minute):
			t.Fatalf("only %d of %d connections were closed or read on: %v", len(got), n, got)
		}
	}
	return got
}

// TestAgentStalledHellos: connections that each declare a 4 MiB frame
// and stall do not grow the host's heap by 4 MiB each (200 of them
// grew it to 805 MiB).
func TestAgentStalledHellos(t *testing.T) {
	const n = 40
	l := newPipeListener(n)
	ctx, cancel := context.WithCancel(context.Background())
	accepted := make(chan error, 1)
	go func() {
		_, err := Accept(ctx, l)
		accepted <- err
	}()
	defer func() {
		cancel()
		<-accepted
	}()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var guests []net.Conn
	for i := 0; i < n; i++ {
		c := l.dial(t)
		guests = append(guests, c)
		go c.Write(binary.BigEndian.AppendUint32(nil, agentproto.MaxFrame))
	}
	waitSeen(t, l, n) // each refused, or its body being read
	runtime.GC()
	runtime.ReadMemStats(&after)
	for _, c := range guests {
		c.Close()
	}
	// Generous: far above what 40 connections cost, far below 40 × 4 MiB.
	const bound = 32 << 20
	if d := int64(after.HeapAlloc) - int64(before.HeapAlloc); d > bound {
		t.Errorf("%d stalled hellos grew the heap by %d MiB, more than %d MiB", n, d>>20, bound>>20)
	}
}

// TestAgentConnCap: the guest's connections that the host holds before
// anyone takes them are capped at maxConns; those past it are closed at
// once, and room comes back when one goes.
func TestAgentConnCap(t *testing.T) {
	const extra = 10
	l := newPipeListener(maxConns + extra + 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	type accepted struct {
		ag  *Agent
		err error
	}
	agc := make(chan accepted, 1)
	go func() {
		ag, err := Accept(ctx, l)
		agc <- accepted{ag, err}
	}()
	ctl := l.dial(t)
	defer ctl.Close()
	go agentproto.Write(ctl, agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleControl})
	a := <-agc
	if a.err != nil {
		t.Fatal(a.err)
	}
	ag := a.ag
	defer ag.Close()
	var silent []net.Conn
	for i := 0; i < maxConns+extra; i++ {
		silent = append(silent, l.dial(t))
	}
	defer func() {
		for _, c := range silent {
			c.Close()
		}
	}()
	// The control connection (index 0) is read on; of the others, only
	// those past maxConns are closed.
	for _, i := range waitSeen(t, l, extra+1) {
		if i != 0 && i <= maxConns {
			t.Errorf("connection %d closed, only those past %d should be", i, maxConns)
		}
	}
	// One goes: its room comes back for a stream.
	silent[0].Close()
	if got := waitSeen(t, l, 1); got[0] != 1 {
		t.Fatalf("connection %d closed, want 1", got[0])
	}
	id := agentproto.StreamID{Container: "c", Name: agentproto.Stdout}
	s := l.dial(t)
	defer s.Close()
	go agentproto.Write(s, agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleStream, Stream: &id})
	if _, err := ag.Stream(ctx, id); err != nil {
		t.Errorf("a stream after a connection went: %v", err)
	}
}

// flakyListener fails its first Accepts with errs, as a process out of
// descriptors does, then accepts.
type flakyListener struct {
	net.Listener
	mu   sync.Mutex
	errs []error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		l.mu.Unlock()
		return nil, err
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

func acceptErrs() []error {
	var errs []error
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED} {
		errs = append(errs, &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", e)})
	}
	return errs
}

// TestAcceptLoopsSurviveErrors: the agent's and the control socket's
// accept loops go on after EMFILE, ENFILE and ECONNABORTED, and end when
// their listener closes.
func TestAcceptLoopsSurviveErrors(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "agent"))
	if err != nil {
		t.Fatal(err)
	}
	go fakeAgent(t, filepath.Join(dir, "agent"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ag, err := Accept(ctx, &flakyListener{Listener: ln, errs: acceptErrs()})
	if err != nil {
		t.Fatalf("the agent's accept loop: %v", err)
	}
	defer ag.Close()

	ctlLn, err := net.Listen("unix", filepath.Join(dir, "ctl.sock"))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		ag.ServeControl(&flakyListener{Listener: ctlLn, errs: acceptErrs()})
		close(served)
	}()
	c, err := Dial(filepath.Join(dir, "ctl.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st, err := c.Wait(ctx, "c", "e1"); err != nil || st != 4 {
		t.Errorf("a wait through the control socket after accept errors: %d, %v", st, err)
	}
	ctlLn.Close()
	<-served // the loop ends with its listener
}

// TestServeEndsOnClose: serve returns once its listener is closed.
func TestServeEndsOnClose(t *testing.T) {
	l := newPipeListener(0)
	done := make(chan struct{})
	go func() {
		serve(l, func(c net.Conn) { c.Close() })
		close(done)
	}()
	l.Close()
	<-done
}

// silentAgent dials sock as the agent's control connection, reads
// requests into reqs and never answers.
func silentAgent(t *testing.T, sock string, reqs chan<- agentproto.Request) net.Conn {
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	agentproto.Write(c, agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleControl})
	go func() {
		for {
			var req agentproto.Request
			if agentproto.Read(c, &req) != nil {
				return
			}
			reqs <- req
		}
	}()
	return c
}

// TestWaitsEndOnCancel: every wait on a guest that never answers
// returns when its context ends: the agent's calls, waits and streams,
// and a control socket client's calls.
func TestWaitsEndOnCancel(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	reqs := make(chan agentproto.Request, 16)
	g := silentAgent(t, sock, reqs)
	defer g.Close()
	ag, err := Accept(context.Background(), ln)
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	ctlLn, err := net.Listen("unix", filepath.Join(dir, "ctl.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ctlLn.Close()
	go ag.ServeControl(ctlLn)

	for _, tc := range []struct {
		name    string
		request bool // the wait sends the agent a request first
		wait    func(context.Context) error
	}{
		{"call", true, func(ctx context.Context) error {
			_, err := ag.Call(ctx, agentproto.Request{Op: agentproto.OpCreate, Container: "c"})
			return err
		}},
		{"wait", false, func(ctx context.Context) error { _, err := ag.Wait(ctx, "c", ""); return err }},
		{"stream", false, func(ctx context.Context) error {
			_, err := ag.Stream(ctx, agentproto.StreamID{Container: "c", Name: agentproto.Stdout})
			return err
		}},
		{"client call", true, func(ctx context.Context) error {
			c, err := Dial(filepath.Join(dir, "ctl.sock"))
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Call(ctx, agentproto.Request{Op: agentproto.OpSignal, Container: "c", Signal: 15})
			return err
		}},
		{"client wait", true, func(ctx context.Context) error {
			c, err := Dial(filepath.Join(dir, "ctl.sock"))
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Wait(ctx, "c", "")
			return err
		}},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- tc.wait(ctx) }()
		if tc.request {
			<-reqs // the guest has it, and will never answer
		}
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Errorf("%s: %v, want context.Canceled", tc.name, err)
		}
	}
}

func TestCleanText(t *testing.T) {
	long := string(make([]byte, 3*maxText))
	for _, tc := range []struct{ in, want string }{
		{"plain text, ünïcode", "plain text, ünïcode"},
		{"two\nlines\r\n\tand a tab", "two lines   and a tab"},
		{"\x1b[2J\x1b]0;pwned\x07red", `\u001b[2J\u001b]0;pwned\u0007red`},
		{"nul\x00 del\x7f c1\u009b", `nul\u0000 del\u007f c1\u009b`},
		{"bidi \u202eevil\u202c", `bidi \u202eevil\u202c`},
		{"bad \xff\xfe utf-8", `bad \xff\xfe utf-8`},
		{long, ""}, // checked below
	} {
		got := CleanText(tc.in)
		if tc.in == long {
			if len(got) > maxText+16 || !strings.HasSuffix(got, "…") {
				t.Errorf("a %d-byte text came out as %d bytes, want at most about %d ending in …", len(tc.in), len(got), maxText)
			}
			continue
		}
		if got != tc.want {
			t.Errorf("CleanText(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestHostileReplies: a guest's error text is cleaned and a code that is
// not docker's (126, 127) dropped; an exit status outside 0-255 is an
// error, directly and through the control socket.
func TestHostileReplies(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	reqs := make(chan agentproto.Request, 16)
	g := silentAgent(t, sock, reqs)
	defer g.Close()
	ag, err := Accept(context.Background(), ln)
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	go func() { // the agent: answers as the test says
		for req := range reqs {
			rep := agentproto.Reply{ID: req.ID}
			switch {
			case req.Op == agentproto.OpStart:
				rep.Error, rep.Code = "no\x1b[31m\nsuch file", 256
			case req.Op == agentproto.OpExec:
				rep.Error, rep.Code = "not found", 127
			case req.Op == agentproto.OpWait && req.Exec == "neg":
				rep.Status = -1
			case req.Op == agentproto.OpWait:
				rep.Status = 256
			}
			agentproto.Write(g, rep)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tc := range []struct {
		op       string
		wantMsg  string
		wantCode int
	}{
		{agentproto.OpStart, `no\u001b[31m such file`, 0},
		{agentproto.OpExec, "not found", 127},
	} {
		_, err := ag.Call(ctx, agentproto.Request{Op: tc.op, Container: "c"})
		var se *StartError
		if !errors.As(err, &se) || se.Msg != tc.wantMsg || se.Code != tc.wantCode {
			t.Errorf("%s: %#v, want a StartError %q with code %d", tc.op, err, tc.wantMsg, tc.wantCode)
		}
	}
	for _, tc := range []struct{ exec, want string }{{"", "256"}, {"neg", "-1"}} {
		agentproto.Write(g, agentproto.Reply{Event: agentproto.EventExit, Container: "c", Exec: tc.exec, Status: map[string]int{"": 256, "neg": -1}[tc.exec]})
		if st, err := ag.Wait(ctx, "c", tc.exec); !errors.Is(err, ErrBadStatus) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Wait for status %s: %d, %v; want ErrBadStatus naming it", tc.want, st, err)
		}
	}
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
	if st, err := c.Wait(ctx, "c", "x"); !errors.Is(err, ErrBadStatus) {
		t.Errorf("relayed wait for status 256: %d, %v; want ErrBadStatus", st, err)
	}
}
