package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/vesselvm/vessel/guest/agentproto"
)

// ErrAgentGone is returned for a request the agent cannot answer any
// more: its control connection closed (the VM ended).
var ErrAgentGone = errors.New("the guest agent is gone")

// StartError is a failure of the agent to create or start a process.
// Code is the exit status docker gives it: 127 for a command that was not
// found, 126 for one that cannot be run, 0 for any other failure.
type StartError struct {
	Code int
	Msg  string
}

func (e *StartError) Error() string { return e.Msg }

// startError is the error of a reply that carries one: its text made
// safe to print, and its code kept only if it is one of docker's.
func startError(r agentproto.Reply) *StartError {
	e := &StartError{Msg: CleanText(r.Error)}
	if r.Code == 126 || r.Code == 127 {
		e.Code = r.Code
	}
	return e
}

// ErrBadStatus is returned for an exit status outside 0-255 from the
// guest.
var ErrBadStatus = errors.New("the guest reported an impossible exit status")

// exitStatus checks the status of a process's exit, as the guest
// reported it: an exit status is 0-255, anything else would turn into
// another status (256 into 0) on the way out of vessel.
func exitStatus(r agentproto.Reply) (int, error) {
	if r.Status < 0 || r.Status > 255 {
		return 0, fmt.Errorf("%w: %d", ErrBadStatus, r.Status)
	}
	return r.Status, nil
}

// maxText bounds guest-supplied text in vessel's messages.
const maxText = 1024

// CleanText makes guest-supplied text safe to print in one line of
// vessel's own messages: line breaks and tabs become spaces, other
// control characters (terminal escapes included), bidirectional
// overrides and bytes that are not UTF-8 are shown escaped, and it is
// cut to maxText bytes.
func CleanText(s string) string {
	var b strings.Builder
	for len(s) > 0 {
		if b.Len() >= maxText {
			b.WriteString("…")
			break
		}
		r, n := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, "\\x%02x", s[0])
		case r == '\n', r == '\r', r == '\t':
			b.WriteByte(' ')
		case unicode.IsControl(r), unicode.Is(unicode.Bidi_Control, r):
			fmt.Fprintf(&b, "\\u%04x", r)
		default:
			b.WriteString(s[:n])
		}
		s = s[n:]
	}
	return b.String()
}

// Agent is the host's side of the guest agent: it accepts the agent's
// connections on the host end of the vsock device (the Unix socket
// UDS_<agentproto.Port>), sends requests on the control connection and
// hands out stream connections to whoever expects them.
type Agent struct {
	ln  net.Listener
	ctl net.Conn

	wmu    sync.Mutex // serializes requests on ctl
	mu     sync.Mutex
	nextID uint64
	calls  map[uint64]chan agentproto.Reply
	gone   bool
	done   chan struct{} // closed when the control connection ends
	exits  map[procKey]chan agentproto.Reply

	smu     sync.Mutex
	streams map[agentproto.StreamID]chan net.Conn
	held    int  // connections counted against maxConns
	closed  bool // no more streams are filed
}

// helloTimeout bounds how long a new connection may take to say hello.
const helloTimeout = 10 * time.Second

// maxConns bounds the guest's connections the host holds that nobody
// has taken yet: those whose hello has not arrived and the streams not
// yet claimed. A connection past it is closed at once, so a hostile guest
// cannot make the host hold descriptors, goroutines or buffers without
// bound; it can only starve its own streams.
const maxConns = 128

// Accept serves ln (the agent's port) and waits until the agent's control
// connection arrives, or ctx ends (for instance because the VM stopped
// before the agent came up). The Agent owns ln from then on.
func Accept(ctx context.Context, ln net.Listener) (*Agent, error) {
	a := &Agent{ln: ln, calls: map[uint64]chan agentproto.Reply{}, done: make(chan struct{}),
		exits: map[procKey]chan agentproto.Reply{}, streams: map[agentproto.StreamID]chan net.Conn{}}
	ctlc := make(chan net.Conn, 1)
	go serve(ln, func(c net.Conn) {
		if !a.hold() {
			c.Close()
			return
		}
		go a.hello(c, ctlc)
	})
	select {
	case c := <-ctlc:
		a.ctl = c
		go a.readLoop()
		return a, nil
	case <-ctx.Done():
		a.closeStreams()
		ln.Close()
		return nil, ctx.Err()
	}
}

// Accept back-off after an error: from acceptMinDelay, doubling up to
// acceptMaxDelay, as net/http's Server does.
const (
	acceptMinDelay = 5 * time.Millisecond
	acceptMaxDelay = time.Second
)

// serve accepts connections on ln and hands each to handle until ln is
// closed. Any other error (EMFILE and ENFILE when descriptors run out,
// ECONNABORTED) is taken as passing: it backs off and accepts again.
func serve(ln net.Listener, handle func(net.Conn)) {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, acceptMinDelay), acceptMaxDelay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		handle(c)
	}
}

// hold counts a new connection against maxConns; false means there is
// no room (or the Agent is closed) and the connection must go.
func (a *Agent) hold() bool {
	a.smu.Lock()
	defer a.smu.Unlock()
	if a.closed || a.held >= maxConns {
		return false
	}
	a.held++
	return true
}

// release gives a held connection's room back.
func (a *Agent) release() {
	a.smu.Lock()
	a.held--
	a.smu.Unlock()
}

// hello reads a new connection's hello: the first control connection
// goes to ctlc, streams to whoever expects them, anything else is
// closed.
func (a *Agent) hello(c net.Conn, ctlc chan net.Conn) {
	var h agentproto.Hello
	c.SetReadDeadline(time.Now().Add(helloTimeout))
	err := agentproto.ReadHello(c, &h)
	c.SetReadDeadline(time.Time{})
	kept := false
	switch {
	case err != nil, h.Version != agentproto.Version:
	case h.Role == agentproto.RoleControl:
		a.release() // taken, or closed: not held either way
		select {
		case ctlc <- c:
		default:
			c.Close() // one control connection only
		}
		return
	case h.Role == agentproto.RoleStream && h.Stream != nil:
		// A duplicate, or too many unclaimed streams, is dropped.
		kept = a.offerStream(*h.Stream, c)
	}
	if !kept {
		a.release() // before the close, which the guest sees
		c.Close()
	}
}

// offerStream files a stream's connection for Stream to take, unless
// the Agent is closed, the stream already has one, or maxPending streams
// are waiting; it reports whether c was filed (and stays held).
func (a *Agent) offerStream(id agentproto.StreamID, c net.Conn) bool {
	a.smu.Lock()
	defer a.smu.Unlock()
	if a.closed {
		return false
	}
	return offerLocked(a.streams, id, c)
}

// stream returns the channel for a stream's connection.
func (a *Agent) stream(id agentproto.StreamID) chan net.Conn {
	return rendezvous(&a.smu, a.streams, id)
}

// maxPending bounds the streams and exit events the guest has sent that
// nobody has taken yet: a hostile guest cannot make the host hold an
// unbounded number of connections or events.
const maxPending = 256

// offer delivers v for k without blocking, unless k already has an
// undelivered value or maxPending keys are waiting; it reports whether v
// was taken.
func offer[K comparable, V any](mu *sync.Mutex, m map[K]chan V, k K, v V) bool {
	mu.Lock()
	defer mu.Unlock()
	return offerLocked(m, k, v)
}

// offerLocked is offer with its lock held: the bound is checked, the
// entry made and the value sent under one lock, so concurrent offers
// cannot pass the bound together and a value cannot land in a channel
// its taker has given up on.
func offerLocked[K comparable, V any](m map[K]chan V, k K, v V) bool {
	ch, ok := m[k]
	if !ok {
		if len(m) >= maxPending {
			return false
		}
		ch = make(chan V, 1)
		m[k] = ch
	}
	select {
	case ch <- v:
		return true
	default:
		return false
	}
}

// rendezvous returns m's channel for k, making it (with room for the one
// value that will ever be sent) if it is the first to ask: whichever of
// the sender and the receiver comes first.
func rendezvous[K comparable, V any](mu *sync.Mutex, m map[K]chan V, k K) chan V {
	mu.Lock()
	defer mu.Unlock()
	ch, ok := m[k]
	if !ok {
		ch = make(chan V, 1)
		m[k] = ch
	}
	return ch
}

// Stream waits for the agent's connection for one stream.
func (a *Agent) Stream(ctx context.Context, id agentproto.StreamID) (net.Conn, error) {
	ch := a.stream(id)
	select {
	case c := <-ch:
		a.smu.Lock()
		delete(a.streams, id)
		a.held--
		a.smu.Unlock()
		return c, nil
	case <-ctx.Done():
		a.smu.Lock()
		if a.streams[id] == ch && len(ch) == 0 {
			delete(a.streams, id) // nobody waits for it any more
		}
		a.smu.Unlock()
		return nil, fmt.Errorf("%s stream of %s: %w", id.Name, id.Container, ctx.Err())
	}
}

// closeStreams closes the streams nobody took and refuses new ones.
func (a *Agent) closeStreams() {
	a.smu.Lock()
	defer a.smu.Unlock()
	a.closed = true
	for id, ch := range a.streams {
		select {
		case c := <-ch:
			c.Close()
			a.held--
		default:
		}
		delete(a.streams, id)
	}
}

// readLoop dispatches replies and events until the connection ends.
func (a *Agent) readLoop() {
	for {
		var r agentproto.Reply
		if err := agentproto.Read(a.ctl, &r); err != nil {
			a.mu.Lock()
			a.gone = true
			for id, ch := range a.calls {
				close(ch)
				delete(a.calls, id)
			}
			a.mu.Unlock()
			close(a.done)
			return
		}
		if r.ID == 0 {
			if r.Event == agentproto.EventExit {
				offer(&a.mu, a.exits, procKey{r.Container, r.Exec}, r) // a duplicate event is dropped
			}
			continue
		}
		a.mu.Lock()
		ch := a.calls[r.ID]
		delete(a.calls, r.ID)
		a.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	}
}

// procKey names a process: a container's own (exec "") or an exec'd one.
type procKey struct{ container, exec string }

// exit returns the channel for a process's exit event.
func (a *Agent) exit(k procKey) chan agentproto.Reply {
	return rendezvous(&a.mu, a.exits, k)
}

// Wait waits for a process's exit (exec "" is the container's own
// process) and returns its status: its exit code, or 128+N when signal N
// killed it; a status outside 0-255 is an error wrapping ErrBadStatus.
// The agent reports an exit once the process's output has all
// been sent.
func (a *Agent) Wait(ctx context.Context, container, exec string) (int, error) {
	k := procKey{container, exec}
	select {
	case r := <-a.exit(k):
		a.mu.Lock()
		delete(a.exits, k)
		a.mu.Unlock()
		return exitStatus(r)
	case <-a.done:
		select {
		case r := <-a.exit(k): // the exit came just before the end
			return exitStatus(r)
		default:
		}
		return 0, fmt.Errorf("wait for %s: %w", container, ErrAgentGone)
	case <-ctx.Done():
		return 0, fmt.Errorf("wait for %s: %w", container, ctx.Err())
	}
}

// Call sends req and waits for its reply. A reply with an error comes
// back as a *StartError.
func (a *Agent) Call(ctx context.Context, req agentproto.Request) (agentproto.Reply, error) {
	ch := make(chan agentproto.Reply, 1)
	a.mu.Lock()
	if a.gone {
		a.mu.Unlock()
		return agentproto.Reply{}, ErrAgentGone
	}
	a.nextID++
	req.ID = a.nextID
	a.calls[req.ID] = ch
	a.mu.Unlock()
	// The write is bounded too: a guest that stops reading its control
	// connection fills it, and a write without a limit would then hold
	// this call, and every call after it, for good.
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(maxWriteWait)
	}
	a.wmu.Lock()
	err := ctx.Err() // a call whose time is up sends nothing
	cw := &countingWriter{w: a.ctl}
	if err == nil {
		a.ctl.SetWriteDeadline(deadline)
		err = agentproto.Write(cw, req)
		a.ctl.SetWriteDeadline(time.Time{})
	}
	a.wmu.Unlock()
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) && cw.n > 0 {
			// Part of the request went: the connection can carry no
			// more requests. The agent is gone for every call
			// (readLoop), as for a guest that closed it.
			a.ctl.Close()
		}
		a.mu.Lock()
		delete(a.calls, req.ID)
		a.mu.Unlock()
		if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil {
			// The call's own time ran out: say so as a wait's end
			// does, for callers that tell it from other failures.
			err = fmt.Errorf("writing the request: %w", ctx.Err())
		}
		return agentproto.Reply{}, fmt.Errorf("%s: %w", req.Op, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return r, fmt.Errorf("%s: %w", req.Op, ErrAgentGone)
		}
		if r.Error != "" {
			return r, startError(r)
		}
		return r, nil
	case <-ctx.Done():
		a.mu.Lock()
		delete(a.calls, req.ID) // a late reply is dropped
		a.mu.Unlock()
		return agentproto.Reply{}, fmt.Errorf("%s: %w", req.Op, ctx.Err())
	}
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += n
	return n, err
}

// maxWriteWait bounds the write of a request whose context has no
// deadline: a guest that takes none of a request for that long has
// stopped reading its control connection.
const maxWriteWait = 2 * time.Minute

// Close closes the listener, the control connection and the streams
// nobody took.
func (a *Agent) Close() error {
	a.ln.Close()
	a.closeStreams()
	return a.ctl.Close()
}
