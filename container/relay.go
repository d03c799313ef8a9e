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
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			var h agentproto.Hello
			c.SetReadDeadline(time.Now().Add(helloTimeout))
			if agentproto.Read(c, &h) != nil || h.Version != agentproto.Version {
				return
			}
			c.SetReadDeadline(time.Time{})
			switch {
			case h.Role == agentproto.RoleControl:
				a.relayControl(c)
			case h.Role == agentproto.RoleStream && h.Stream != nil:
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				g, err := a.Stream(ctx, *h.Stream)
				cancel()
				if err != nil {
					return
				}
				defer g.Close()
				splice(c, g)
			}
		}()
	}
}

// relayControl passes one client's requests on, one at a time.
func (a *Agent) relayControl(c net.Conn) {
	for {
		var req agentproto.Request
		if err := agentproto.Read(c, &req); err != nil {
			return
		}
		id := req.ID
		var rep agentproto.Reply
		if !relayOps[req.Op] {
			rep = agentproto.Reply{Error: fmt.Sprintf("%s: not allowed through the control socket", req.Op)}
		} else {
			r, err := a.Call(context.Background(), req)
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

// Call sends req and waits for its reply; a reply with an error comes
// back as a *StartError. Calls on one Client are sequential: use another
// Client for a concurrent one (such as a Wait).
func (c *Client) Call(req agentproto.Request) (agentproto.Reply, error) {
	c.next++
	req.ID = c.next
	if err := agentproto.Write(c.ctl, req); err != nil {
		return agentproto.Reply{}, fmt.Errorf("%s: %w", req.Op, err)
	}
	var r agentproto.Reply
	if err := agentproto.Read(c.ctl, &r); err != nil {
		if errors.Is(err, io.EOF) {
			err = ErrAgentGone
		}
		return r, fmt.Errorf("%s: %w", req.Op, err)
	}
	if r.Error != "" {
		return r, &StartError{Code: r.Code, Msg: r.Error}
	}
	return r, nil
}

// Stream opens one stdio stream of a process; open them before asking
// for the process (OpExec), which waits for nothing.
func (c *Client) Stream(id agentproto.StreamID) (net.Conn, error) {
	return dialHello(c.sock, agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleStream, Stream: &id})
}

// Close closes the control connection.
func (c *Client) Close() error { return c.ctl.Close() }
