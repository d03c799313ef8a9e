package vmm

import (
	"io"
	"sync"
	"time"
)

// consoleBufferMax bounds console output buffered for the host writer; a
// guest that prints faster than the host consumes blocks in its UART
// writes, as on real hardware, instead of growing VMM memory.
const consoleBufferMax = 1 << 20

// consoleWriter moves guest console output off the vCPU threads: the UART
// appends to a bounded buffer, and one goroutine writes it to the host.
type consoleWriter struct {
	out     io.Writer
	mu      sync.Mutex
	cond    *sync.Cond
	buf     []byte
	closed  bool
	writing bool
	done    chan struct{}
}

func newConsoleWriter(out io.Writer) *consoleWriter {
	w := &consoleWriter{out: out, done: make(chan struct{})}
	w.cond = sync.NewCond(&w.mu)
	return w
}

// Write queues guest output; it blocks only while the buffer is full.
func (w *consoleWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.buf)+len(p) > consoleBufferMax && !w.closed {
		w.cond.Wait()
	}
	if w.closed {
		return len(p), nil // the VM is stopping; drop late output
	}
	w.buf = append(w.buf, p...)
	w.cond.Broadcast()
	return len(p), nil
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
		w.writing = true
		w.cond.Broadcast()
		w.mu.Unlock()
		w.out.Write(chunk)
		w.mu.Lock()
		w.writing = false
		w.cond.Broadcast()
		w.mu.Unlock()
	}
}

// flush writes out what is buffered and stops the writer goroutine.
func (w *consoleWriter) flush() {
	w.mu.Lock()
	w.closed = true
	w.cond.Broadcast()
	w.mu.Unlock()
	select {
	case <-w.done:
	case <-time.After(5 * time.Second):
		// The host writer is stuck (e.g. a blocked pipe): give up on it.
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
