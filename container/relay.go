package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/vesselvm/vessel/guest/agentproto"
)

// relayOps are the requests other vessel commands may send a running
// container through its control socket; creating, deleting and shutting
// down belong to the vessel process that runs the VM.
var relayOps = map[string]bool{
	agentproto.OpExec: true, agentproto.OpSignal: true, agentproto.OpResize: true, agentproto.OpWait: true,
}

// ServeControl serves a container's control socket until ln closes: the
// same protocol as the agent's (agentproto), relayed to it. A control
// connection's requests go to the agent and its replies come back with
// the client's IDs; a stream connection is joined to the agent's stream
// of the same ID, both ways, half-closes included.
func (a *Agent) ServeControl(ln net.Listener) {
	serve(ln, func(c net.Conn) { go a.serveClient(c) })
}

// streamTimeout bounds how long a client's stream connection waits for
// the agent's end of it.
const streamTimeout = time.Minute

// serveClient serves one connection to the control socket.
func (a *Agent) serveClient(c net.Conn) {
	defer c.Close()
	var h agentproto.Hello
	c.SetReadDeadline(time.Now().Add(helloTimeout))
	if agentproto.ReadHello(c, &h) != nil || h.Version != agentproto.Version {
		return
	}
	c.SetReadDeadline(time.Time{})
	switch {
	case h.Role == agentproto.RoleControl:
		a.relayControl(c)
	case h.Role == agentproto.RoleStream && h.Stream != nil:
		ctx, cancel := context.WithTimeout(context.Background(), streamTimeout)
		g, err := a.Stream(ctx, *h.Stream)
		cancel()
		if err != nil {
			return
		}
		defer g.Close()
		splice(c, g)
	}
}

// RequestTimeout bounds the agent's answer to a request other than a
// wait (which lasts as long as the process): generous, for the slowest
// emulated platforms, where a create takes seconds.
const RequestTimeout = 2 * time.Minute

// relayControl passes one client's requests on, one at a time, until
// the client goes; a request of a client that went is abandoned.
func (a *Agent) relayControl(c net.Conn) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reqs := make(chan agentproto.Request)
	go func() {
		defer close(reqs)
		defer cancel()
		for {
			var req agentproto.Request
			if err := agentproto.Read(c, &req); err != nil {
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	for req := range reqs {
		id := req.ID
		var rep agentproto.Reply
		if !relayOps[req.Op] {
			rep = agentproto.Reply{Error: fmt.Sprintf("%s: not allowed through the control socket", req.Op)}
		} else {
			cctx, ccancel := ctx, context.CancelFunc(func() {})
			if req.Op != agentproto.OpWait {
				cctx, ccancel = context.WithTimeout(ctx, RequestTimeout)
			}
			r, err := a.Call(cctx, req)
			ccancel()
			rep = r
			if err != nil {
				rep.Error = err.Error()
			}
		}
		rep.ID = id
		if agentproto.Write(c, rep) != nil {
			return
		}
	}
}

// halfCloser is a connection whose write side closes on its own.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// splice copies a to b and b to a until both directions ended, passing
// each EOF on as a half-close.
func splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if h, ok := dst.(halfCloser); ok {
			h.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
}

// Client talks to a running container through its control socket.
type Client struct {
	sock string
	ctl  net.Conn
	next uint64
}

// Dial connects to a container's control socket.
func Dial(sock string) (*Client, error) {
	c, err := dialHello(sock, agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleControl})
	if err != nil {
		return nil, err
	}
	return &Client{sock: sock, ctl: c}, nil
}

func dialHello(sock string, h agentproto.Hello) (net.Conn, error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("the container's control socket: %w", err)
	}
	if err := agentproto.Write(c, h); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Call sends req and waits for its reply, or until ctx ends (which
// closes the Client: a late reply could not be told from the next one);
// a reply with an error comes back as a *StartError. Calls on one
// Client are sequential: use another Client for a concurrent one (such
// as a Wait).
func (c *Client) Call(ctx context.Context, req agentproto.Request) (agentproto.Reply, error) {
	stop := context.AfterFunc(ctx, func() { c.ctl.SetDeadline(time.Now()) })
	defer func() {
		if !stop() {
			c.ctl.Close()
		}
	}()
	c.next++
	req.ID = c.next
	if err := agentproto.Write(c.ctl, req); err != nil {
		return agentproto.Reply{}, fmt.Errorf("%s: %w", req.Op, callErr(ctx, err))
	}
	var r agentproto.Reply
	if err := agentproto.Read(c.ctl, &r); err != nil {
		return r, fmt.Errorf("%s: %w", req.Op, callErr(ctx, err))
	}
	if r.ID != req.ID {
		return r, fmt.Errorf("%s: %w: reply %d to request %d", req.Op, agentproto.ErrFrame, r.ID, req.ID)
	}
	if r.Error != "" {
		return r, startError(r)
	}
	return r, nil
}

// callErr is the error of a call whose connection failed with err.
func callErr(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ErrAgentGone
	}
	return err
}

// Wait waits until a process of the container (exec "" for its own) has
// exited, or ctx ends, and returns its exit status (0-255).
func (c *Client) Wait(ctx context.Context, container, exec string) (int, error) {
	r, err := c.Call(ctx, agentproto.Request{Op: agentproto.OpWait, Container: container, Exec: exec})
	if err != nil {
		return 0, err
	}
	return exitStatus(r)
}

// Stream opens one stdio stream of a process; open them before asking
// for the process (OpExec), which waits for nothing.
func (c *Client) Stream(id agentproto.StreamID) (net.Conn, error) {
	return dialHello(c.sock, agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleStream, Stream: &id})
}

// Close closes the control connection.
func (c *Client) Close() error { return c.ctl.Close() }
