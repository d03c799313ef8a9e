package container

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

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
}

// helloTimeout bounds how long a new connection may take to say hello.
const helloTimeout = 10 * time.Second

// Accept serves ln (the agent's port) and waits until the agent's control
// connection arrives, or ctx ends (for instance because the VM stopped
// before the agent came up). The Agent owns ln from then on.
func Accept(ctx context.Context, ln net.Listener) (*Agent, error) {
	a := &Agent{ln: ln, calls: map[uint64]chan agentproto.Reply{}, done: make(chan struct{}),
		exits: map[procKey]chan agentproto.Reply{}, streams: map[agentproto.StreamID]chan net.Conn{}}
	ctlc := make(chan net.Conn, 1)
	go a.acceptLoop(ctlc)
	select {
	case c := <-ctlc:
		a.ctl = c
		go a.readLoop()
		return a, nil
	case <-ctx.Done():
		ln.Close()
		return nil, ctx.Err()
	}
}

// acceptLoop reads each connection's hello: the first control
// connection goes to ctlc, streams to whoever expects them.
func (a *Agent) acceptLoop(ctlc chan net.Conn) {
	for {
		c, err := a.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			var h agentproto.Hello
			c.SetReadDeadline(time.Now().Add(helloTimeout))
			err := agentproto.Read(c, &h)
			c.SetReadDeadline(time.Time{})
			switch {
			case err != nil, h.Version != agentproto.Version:
				c.Close()
			case h.Role == agentproto.RoleControl:
				select {
				case ctlc <- c:
				default:
					c.Close() // one control connection only
				}
			case h.Role == agentproto.RoleStream && h.Stream != nil:
				if !offer(&a.smu, a.streams, *h.Stream, c) {
					c.Close() // a duplicate, or too many unclaimed streams
				}
			default:
				c.Close()
			}
		}()
	}
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
	ch, ok := m[k]
	if !ok {
		// Checked and made under one lock: concurrent offers cannot
		// pass the bound together.
		if len(m) >= maxPending {
			mu.Unlock()
			return false
		}
		ch = make(chan V, 1)
		m[k] = ch
	}
	mu.Unlock()
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
	select {
	case c := <-a.stream(id):
		a.smu.Lock()
		delete(a.streams, id)
		a.smu.Unlock()
		return c, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%s stream of %s: %w", id.Name, id.Container, ctx.Err())
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
// killed it. The agent reports an exit once the process's output has all
// been sent.
func (a *Agent) Wait(ctx context.Context, container, exec string) (int, error) {
	k := procKey{container, exec}
	select {
	case r := <-a.exit(k):
		a.mu.Lock()
		delete(a.exits, k)
		a.mu.Unlock()
		return r.Status, nil
	case <-a.done:
		select {
		case r := <-a.exit(k): // the exit came just before the end
			return r.Status, nil
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
	a.wmu.Lock()
	err := agentproto.Write(a.ctl, req)
	a.wmu.Unlock()
	if err != nil {
		return agentproto.Reply{}, fmt.Errorf("%s: %w", req.Op, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return r, fmt.Errorf("%s: %w", req.Op, ErrAgentGone)
		}
		if r.Error != "" {
			return r, &StartError{Code: r.Code, Msg: r.Error}
		}
		return r, nil
	case <-ctx.Done():
		return agentproto.Reply{}, fmt.Errorf("%s: %w", req.Op, ctx.Err())
	}
}

// Close closes the listener and the control connection.
func (a *Agent) Close() error {
	a.ln.Close()
	return a.ctl.Close()
}
