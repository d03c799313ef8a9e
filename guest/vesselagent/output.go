package main

import (
	"io"
	"os"
	"sync/atomic"
	"time"
)

// outputIdle bounds the wait for an exited process's output: once every
// stream still open has brought nothing for this long, the streams are
// closed and the exit is reported. A background process the exited one
// left (a shell's `cmd &`, or any process of a container without a PID
// namespace of its own) may hold them open for good, and the exit must
// not wait for it. docker does the same: it waits 2 s for an exited
// process's streams and then closes them (moby's daemon/monitor.go).
var outputIdle = 2 * time.Second

// outputMax bounds that wait however the streams are used: a background
// process writing without pause would otherwise hold the exit back as
// long as it writes. What an exited process left in a pipe (64 KiB at
// most) is passed on well within it.
var outputMax = 30 * time.Second

// outputCopy copies one output stream of a process (a pipe's or a
// terminal's read end, pollable, so that closing it ends a read in
// progress) to the host, and keeps since when it has waited for the
// process to write.
type outputCopy struct {
	src *os.File
	// waiting is when the read in progress began (UnixNano); 0 outside
	// a read, and once the copy has ended.
	waiting atomic.Int64
	ended   atomic.Bool
}

// run copies until the source ends or fails, or the host's side does.
func (o *outputCopy) run(dst io.Writer) {
	defer func() { o.waiting.Store(0); o.ended.Store(true) }()
	buf := make([]byte, 32<<10)
	for {
		o.waiting.Store(time.Now().UnixNano())
		n, err := o.src.Read(buf)
		o.waiting.Store(0)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// idle reports whether the copy is still running and has waited for
// the process for at least d at now.
func (o *outputCopy) idle(d time.Duration, now time.Time) bool {
	t := o.waiting.Load()
	return !o.ended.Load() && t != 0 && now.Sub(time.Unix(0, t)) >= d
}

// drainOutputs waits until every copy has ended, or, once each one
// still running has waited outputIdle for its process, or outputMax
// after the call, closes their sources, which ends them. done is closed
// when every copy has ended.
func drainOutputs(outs []*outputCopy, done <-chan struct{}) {
	tick := time.NewTicker(outputIdle / 4)
	defer tick.Stop()
	deadline := time.Now().Add(outputMax)
	for {
		select {
		case <-done:
			return
		case now := <-tick.C:
			running, idle := 0, 0
			for _, o := range outs {
				if !o.ended.Load() {
					running++
					if o.idle(outputIdle, now) {
						idle++
					}
				}
			}
			if running > 0 && (idle == running || now.After(deadline)) {
				for _, o := range outs {
					o.src.Close()
				}
				<-done
				return
			}
		}
	}
}
