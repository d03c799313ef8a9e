package vmm

import (
	"io"
	"sync"
	"time"
)

// consoleBufferMax bounds console output buffered for the host writer.
// While the VM runs, a guest that prints faster than the host takes its
// output waits in its UART writes, as on real hardware, so a slow reader
// of vessel's stdout loses nothing and VMM memory stays bounded. With the
// chunk being written, at most twice this is held.
const consoleBufferMax = 1 << 20

// consoleFlushWait bounds how long the end of a run waits for the host to
// take the buffered output.
const consoleFlushWait = 5 * time.Second

// consoleWriter moves guest console output off the vCPU threads: the UART
// appends to a bounded buffer, and one goroutine writes it to the host.
type consoleWriter struct {
	out      io.Writer
	mu       sync.Mutex
	cond     *sync.Cond
	buf      []byte
	stopping bool // the VM is ending: writers no longer wait for room
	closed   bool // flushed: later output is dropped uncounted
	dropped  uint64
	done     chan struct{}
	wait     time.Duration // flush's bound, consoleFlushWait
}

func newConsoleWriter(out io.Writer) *consoleWriter {
	w := &consoleWriter{out: out, done: make(chan struct{}), wait: consoleFlushWait}
	w.cond = sync.NewCond(&w.mu)
	return w
}

// Write queues guest output. While the VM runs it waits for room in the
// buffer; once the VM is ending (release) it never waits, and output that
// does not fit is dropped and counted, so a host stdout that never drains
// cannot keep a vCPU, and so Stop, from returning. It always reports all
// of p written, as a UART's transmitter takes every byte.
func (w *consoleWriter) Write(p []byte) (int, error) {
	n := len(p)
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.buf)+len(p) > consoleBufferMax && !w.stopping {
		w.cond.Wait()
	}
	if w.closed {
		return n, nil // the VM has ended; drop late output
	}
	if room := consoleBufferMax - len(w.buf); len(p) > room {
		w.dropped += uint64(len(p) - room)
		p = p[:room]
	}
	if len(p) > 0 {
		w.buf = append(w.buf, p...)
		w.cond.Broadcast()
	}
	return n, nil
}

// release lets every writer waiting for room go on without it: the VM is
// ending, and its vCPUs must return whatever the host's stdout does.
func (w *consoleWriter) release() {
	w.mu.Lock()
	w.stopping = true
	w.cond.Broadcast()
	w.mu.Unlock()
}

// Dropped returns how many bytes of output were dropped because the host
// had not taken the buffer when the VM ended.
func (w *consoleWriter) Dropped() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dropped
}

func (w *consoleWriter) start() { go w.run() }

func (w *consoleWriter) run() {
	defer close(w.done)
	var chunk []byte
	for {
		w.mu.Lock()
		for len(w.buf) == 0 && !w.closed {
			w.cond.Wait()
		}
		if len(w.buf) == 0 && w.closed {
			w.mu.Unlock()
			return
		}
		chunk, w.buf = w.buf, chunk[:0]
		w.cond.Broadcast() // room for waiting writers
		w.mu.Unlock()
		w.out.Write(chunk)
	}
}

// flush stops taking output, writes out what is buffered and stops the
// writer goroutine. It waits at most w.wait: a host writer
// stuck for good (a pipe nobody reads) is abandoned, its goroutine left
// blocked in the host's Write.
func (w *consoleWriter) flush() {
	w.mu.Lock()
	w.stopping, w.closed = true, true
	w.cond.Broadcast()
	w.mu.Unlock()
	t := time.NewTimer(w.wait)
	defer t.Stop()
	select {
	case <-w.done:
	case <-t.C:
	}
}

// forwardInput copies host input to the serial port until EOF or stop.
// When the UART's receive FIFO is full it waits for the guest to drain it,
// so typed or piped input is never dropped.
func (v *VM) forwardInput(r io.Reader) {
	buf := make([]byte, 256)
	for {
		n, err := r.Read(buf)
		p := buf[:n]
		for len(p) > 0 {
			k, _ := v.serial.Enqueue(p)
			p = p[k:]
			if len(p) == 0 {
				break
			}
			select {
			case <-v.stopped:
				return
			case <-v.serial.RxDrained():
			case <-time.After(100 * time.Millisecond):
			}
		}
		if err != nil {
			return // EOF or a closed input: the guest just gets no more
		}
		select {
		case <-v.stopped:
			return
		default:
		}
	}
}
