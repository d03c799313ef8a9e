package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/vesselvm/vessel/guest/agentproto"
)

// attached is a container process's stdio joined to vessel's.
type attached struct {
	out   sync.WaitGroup // output copies still running
	conns []net.Conn
	raw   *term.State // the host terminal's settings before raw mode
}

// attach opens a process's streams with open and joins them to vessel's
// stdio, for run and exec alike. With a terminal there is one TTY stream
// (and, when interactive, the host terminal goes raw and its input
// follows); without, stdout and stderr, and stdin when interactive,
// whose end is passed on as a half-close.
func attach(open func(name string) (net.Conn, error), tty, interactive bool, stdout, stderr io.Writer) (_ *attached, err error) {
	a := &attached{}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	output := func(name string, w io.Writer) (net.Conn, error) {
		c, err := open(name)
		if err != nil {
			return nil, err
		}
		a.conns = append(a.conns, c)
		a.out.Add(1)
		go func() {
			defer a.out.Done()
			io.Copy(w, c)
		}()
		return c, nil
	}
	if tty {
		c, err := output(agentproto.TTY, stdout)
		if err != nil {
			return nil, err
		}
		if interactive {
			if old, err := term.MakeRaw(int(os.Stdin.Fd())); err == nil {
				a.raw = old
			}
			go io.Copy(c, os.Stdin)
		}
		return a, nil
	}
	for _, s := range []struct {
		name string
		w    io.Writer
	}{{agentproto.Stdout, stdout}, {agentproto.Stderr, stderr}} {
		if _, err := output(s.name, s.w); err != nil {
			return nil, err
		}
	}
	if interactive {
		in, err := open(agentproto.Stdin)
		if err != nil {
			return nil, err
		}
		a.conns = append(a.conns, in)
		go func() {
			io.Copy(in, os.Stdin)
			in.(*net.UnixConn).CloseWrite() // EOF for the process
		}()
	}
	return a, nil
}

// drain waits until the process's output has all been copied (its
// streams ended), which the agent promises by the time it reports the
// process's exit: for at most d, or until ctx ends. A guest that keeps
// the streams open makes it fail; close then ends the copies.
func (a *attached) drain(ctx context.Context, d time.Duration) error {
	done := make(chan struct{})
	go func() {
		a.out.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return fmt.Errorf("the guest kept the process's output open %v after its exit", d)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close closes the streams and restores the host terminal.
func (a *attached) close() {
	for _, c := range a.conns {
		c.Close()
	}
	if a.raw != nil {
		term.Restore(int(os.Stdin.Fd()), a.raw)
	}
}
