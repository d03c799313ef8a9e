// Command vesselagent is vessel's agent inside the guest: it runs
// containers with runc on the host's behalf.
//
// vessel boots the VM with vesselagent as the command of the guest init
// (guest/vesselinit). The agent makes itself a child subreaper, dials the
// host over vsock (guest/agentproto), and serves the host's requests on
// that control connection: create a container from the image disk the
// host attached (read-only ext4, with a tmpfs overlay as its writable
// layer), start it, exec more processes in it, signal, resize, delete.
// Each process's stdio travels on vsock connections of its own. When the
// host says shutdown, the agent exits, and the init powers the VM off.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"sync"
	"time"

	runc "github.com/containerd/go-runc"
	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/guest/agentproto"
)

// stateDir holds the agent's per-container directories (bundle, root file
// system layers, runc's log).
const stateDir = "/run/vessel"

func main() {
	log.SetFlags(0)
	log.SetPrefix("vesselagent: ")
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		log.Fatalf("become a subreaper: %v", err)
	}
	// A container that fills the VM's memory must not take the agent
	// with it: the OOM killer passes over it (and runc, which inherits
	// this), as over docker's daemon and containerd's shims. Containers
	// set their own score (container.Spec gives 0).
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte("-999"), 0); err != nil {
		log.Printf("oom_score_adj: %v", err)
	}
	// Terminal signals meant for the containers must not end the agent.
	signal.Ignore(unix.SIGPIPE, unix.SIGHUP, unix.SIGINT, unix.SIGTTOU, unix.SIGTTIN)
	a := &agent{reaper: newReaper(), containers: map[string]*container{}}
	runc.Monitor = a.reaper

	for {
		conn, err := dialHost(agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleControl})
		if err != nil {
			log.Fatalf("%v", err)
		}
		a.wmu.Lock()
		a.ctl = conn
		a.wmu.Unlock()
		if !a.serve(bufio.NewReader(conn)) {
			return
		}
		// A template's clone: the snapshot's host is gone, the clone's
		// listens on the same port.
		conn.Close()
	}
}

// dialHost opens a connection to the host's agent port and says hello.
// The host listens before the VM boots, so the first attempt normally
// succeeds; a few retries cover a vsock device that is still coming up.
func dialHost(h agentproto.Hello) (*vsock.Conn, error) {
	var err error
	for i := 0; i < 50; i++ {
		var c *vsock.Conn
		if c, err = vsock.Dial(vsock.Host, agentproto.Port, nil); err == nil {
			if err = agentproto.Write(c, h); err != nil {
				c.Close()
				return nil, fmt.Errorf("hello to the host: %w", err)
			}
			return c, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, fmt.Errorf("dial the host on vsock port %d: %w", agentproto.Port, err)
}

// agent is the state of the one agent process.
type agent struct {
	reaper *reaper
	ctl    io.Writer
	wmu    sync.Mutex // serializes frames on ctl

	mu         sync.Mutex
	containers map[string]*container
	// shares are the 9P shares mounted for the VM's life (a pod's), by
	// mount tag.
	shares map[string]string
	// template is set once the host said OpTemplate: the end of the
	// control connection is then a restore, not the host going away.
	template bool
	// sysBound: sysBind is mounted (userNSSysfs).
	sysBound bool
}

// send writes one reply or event on the control connection.
func (a *agent) send(r agentproto.Reply) {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	if err := agentproto.Write(a.ctl, r); err != nil {
		log.Printf("write to the host: %v", err)
	}
}

// serve handles requests until the host says shutdown or goes away.
// Requests run concurrently (a create may take a while; a signal must
// not wait for it); each gets its reply. It reports whether the agent
// should dial the host again: the connection of a template's agent
// ended, which is its clone being restored.
func (a *agent) serve(r io.Reader) bool {
	for {
		var req agentproto.Request
		if err := agentproto.Read(r, &req); err != nil {
			a.mu.Lock()
			clone := a.template
			a.template = false
			a.mu.Unlock()
			if clone {
				return true
			}
			if !errors.Is(err, io.EOF) {
				log.Printf("control connection: %v", err)
			}
			a.shutdown()
			return false
		}
		switch req.Op {
		case agentproto.OpShutdown:
			a.shutdown()
			a.send(agentproto.Reply{ID: req.ID})
			return false
		case agentproto.OpTemplate:
			a.send(a.templateReply(&req))
			continue
		}
		go func() {
			rep := a.handle(&req)
			rep.ID = req.ID
			a.send(rep)
		}()
	}
}

// templateReply answers OpTemplate: only an agent without containers
// can become a template. With a container configuration in the request
// (Create.Spec), it first runs that container once (warmUp), so the
// template's clones start their first container warm.
// The reply's Pid is that of the runc that ran the warm-up, which tells
// the host the warm-up ran.
func (a *agent) templateReply(req *agentproto.Request) agentproto.Reply {
	refuse := func(err error) agentproto.Reply {
		r := fail(fmt.Errorf("template: %w", err))
		r.ID = req.ID
		return r
	}
	empty := func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.containers) == 0
	}
	if !empty() {
		return refuse(errors.New("the agent has containers"))
	}
	rep := agentproto.Reply{ID: req.ID}
	if req.Create != nil && req.Create.Spec != nil {
		// The serve loop reads no request meanwhile: the host sends
		// none before the reply.
		pid, err := warmUp(context.Background(), *req.Create.Spec)
		if err != nil {
			return refuse(err)
		}
		rep.Pid = pid
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.containers) > 0 {
		return refuse(errors.New("the agent has containers"))
	}
	a.template = true
	return rep
}

// handle carries out one request.
func (a *agent) handle(req *agentproto.Request) agentproto.Reply {
	ctx := context.Background()
	if req.Op == agentproto.OpCreate {
		if req.Create == nil || req.Create.Spec == nil || req.Create.Spec.Process == nil {
			return fail(errors.New("create: no configuration"))
		}
		c, err := a.create(ctx, req.Container, req.Create, req.IO)
		if err != nil {
			return fail(err)
		}
		return agentproto.Reply{Pid: c.init.pid, Steps: c.steps.steps, Links: c.links}
	}
	a.mu.Lock()
	c := a.containers[req.Container]
	a.mu.Unlock()
	if c == nil {
		return fail(fmt.Errorf("%s: no such container %q", req.Op, req.Container))
	}
	switch req.Op {
	case agentproto.OpStart:
		return fail(c.start(ctx))
	case agentproto.OpExec:
		if req.Process == nil {
			return fail(errors.New("exec: no process"))
		}
		p, err := c.exec(ctx, req.Exec, req.Process, req.User, req.IO)
		if err != nil {
			return fail(err)
		}
		return agentproto.Reply{Pid: p.pid}
	case agentproto.OpSignal:
		p := c.process(req.Exec)
		if p == nil {
			return fail(fmt.Errorf("signal: no process %q in %s", req.Exec, c.id))
		}
		return fail(p.signal(unix.Signal(req.Signal)))
	case agentproto.OpWait:
		p := c.process(req.Exec)
		if p == nil {
			return fail(fmt.Errorf("wait: no process %q in %s", req.Exec, c.id))
		}
		<-p.done
		return agentproto.Reply{Status: p.status}
	case agentproto.OpResize:
		p := c.process(req.Exec)
		if p == nil || req.Size == nil {
			return fail(fmt.Errorf("resize: no process %q in %s", req.Exec, c.id))
		}
		return fail(p.resize(*req.Size))
	case agentproto.OpUpdate:
		return fail(c.update(ctx, req.Resources))
	case agentproto.OpStats:
		st, err := c.stats(ctx)
		if err != nil {
			return fail(err)
		}
		return agentproto.Reply{Stats: st}
	case agentproto.OpDelete:
		err := c.delete(ctx)
		a.mu.Lock()
		delete(a.containers, c.id)
		a.mu.Unlock()
		return fail(err)
	}
	return fail(fmt.Errorf("unknown operation %q", req.Op))
}

// fail makes the reply for err (nil: success).
func fail(err error) agentproto.Reply {
	if err == nil {
		return agentproto.Reply{}
	}
	var se *startError
	if errors.As(err, &se) {
		return agentproto.Reply{Error: err.Error(), Code: se.code}
	}
	return agentproto.Reply{Error: err.Error()}
}

// shutdown removes every container, so their file systems are unmounted
// cleanly before the VM powers off.
func (a *agent) shutdown() {
	a.mu.Lock()
	cs := a.containers
	a.containers = map[string]*container{}
	a.mu.Unlock()
	for _, c := range cs {
		if err := c.delete(context.Background()); err != nil {
			log.Printf("%v", err)
		}
	}
}
