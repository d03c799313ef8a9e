package main

import (
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"
)

// outputIdle bounds the wait for an exited process's output: a stream
// that has brought nothing for this long after the exit is closed. A
// background process the exited one left (a shell's `cmd &`, or any
// process of a container without a PID namespace of its own) may hold
// it open for good, and the exit must not wait for it. docker does the
// same: it waits 2 s for an exited process's streams and then closes
// them (moby's daemon/monitor.go).
var outputIdle = 2 * time.Second

// outputMax bounds that wait however the streams are used: a background
// process writing without pause, or a host that stopped reading, would
// otherwise hold the exit back for good. What an exited process left in
// a pipe (64 KiB at most) is passed on well within it.
var outputMax = 30 * time.Second

// deadlineWriter is the host's side of a stream: a vsock connection.
type deadlineWriter interface {
	io.Writer
	SetWriteDeadline(time.Time) error
}

// outputCopy copies one output stream of a process to the host. Its
// source is pollable (go-runc's os.Pipe, or pollableTerminal's file),
// so read deadlines end a read in progress.
type outputCopy struct {
	src *os.File
	dst deadlineWriter
	// last is the end of the wait after the exit (UnixNano), 0 before
	// the exit: no read or write lasts beyond it.
	last atomic.Int64
}

// run copies until the source ends, fails or times out, or the host's
// side does.
func (o *outputCopy) run() {
	buf := make([]byte, 32<<10)
	for {
		n, err := o.src.Read(buf)
		if n > 0 {
			if _, werr := o.dst.Write(buf[:n]); werr != nil {
				return
			}
			if last := o.last.Load(); last != 0 {
				o.src.SetReadDeadline(idleEnd(time.Unix(0, last)))
			}
		}
		if err != nil {
			return
		}
	}
}

// exited starts the bounded wait for the rest of the stream: reads end
// once outputIdle passes without data, and everything ends at last.
func (o *outputCopy) exited(last time.Time) {
	o.last.Store(last.UnixNano())
	o.dst.SetWriteDeadline(last)
	o.src.SetReadDeadline(idleEnd(last))
}

// idleEnd is when a read that starts now times out after the exit:
// outputIdle from now, last at the latest.
func idleEnd(last time.Time) time.Time {
	if t := time.Now().Add(outputIdle); t.Before(last) {
		return t
	}
	return last
}

// pollableTerminal returns a file for a terminal master's data, of its
// own descriptor in non-blocking mode, so that read deadlines end a
// read in progress (a blocking descriptor's read is not ended by
// them, nor by close). O_NONBLOCK belongs to the open file, m's too,
// which is then fit for ioctls (the window size) only.
func pollableTerminal(m console.Console) (*os.File, error) {
	fd, err := unix.Dup(int(m.Fd()))
	if err != nil {
		return nil, fmt.Errorf("terminal: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("terminal: %w", err)
	}
	return os.NewFile(uintptr(fd), "terminal"), nil
}
