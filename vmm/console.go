package vmm

import (
	"io"
	"sync"
	"time"
)

// consoleBufferMax bounds console output buffered for the host writer.
// A vCPU never waits for the host: output that does not fit while the
// host side is behind (a stalled terminal, a pipe nobody reads) is
// dropped and counted, so neither a hostile guest nor a stuck stdout can
// block a vCPU or grow VMM memory. With the chunk being written, at most
// twice this is held.
const consoleBufferMax = 1 << 20

// consoleFlushWait bounds how long the end of a run waits for the host to
// take the buffered output.
const consoleFlushWait = 5 * time.Second

// consoleWriter moves guest console output off the vCPU threads: the UART
// appends to a bounded buffer, and one goroutine writes it to the host.
type consoleWriter struct {
	out     io.Writer
	mu      sync.Mutex
	cond    *sync.Cond
	buf     []byte
	closed  bool
	dropped uint64 // bytes dropped because the buffer was full
	done    chan struct{}
	wait    time.Duration // flush's bound, consoleFlushWait
}

func newConsoleWriter(out io.Writer) *consoleWriter {
	w := &consoleWriter{out: out, done: make(chan struct{}), wait: consoleFlushWait}
	w.cond = sync.NewCond(&w.mu)
	return w
}

// Write queues guest output and never blocks on the host: what does not
// fit in the buffer is dropped and counted. It always reports all of p
// written, as a UART's transmitter takes every byte.
func (w *consoleWriter) Write(p []byte) (int, error) {
	n := len(p)
	w.mu.Lock()
	defer w.mu.Unlock()
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

// Dropped returns how many bytes of output were dropped because the host
// did not take them in time.
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
	w.closed = true
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
