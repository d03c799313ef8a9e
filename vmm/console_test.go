package vmm

import (
	"bytes"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestConsoleStalledHost is the stop path with a host stdout that never
// drains (a pipe nobody reads): a vCPU writing more than the buffer holds
// waits for room while the VM runs, and Run's release on stop must let it
// return, so that the wait for the vCPUs and the flush both end. Before
// the fix the vCPU's Write blocked on the full buffer for good and Stop
// never returned.
func TestConsoleStalledHost(t *testing.T) {
	r, wp, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer wp.Close()
	defer r.Close() // after flush: unblocks the abandoned writer goroutine
	w := newConsoleWriter(wp)
	w.wait = 0 // the host never drains: no point waiting for it
	w.start()

	const total = 4 * consoleBufferMax
	line := bytes.Repeat([]byte("x"), 4096)
	wrote := make(chan int, 1)
	go func() { // a vCPU printing on the serial console
		n := 0
		for ; n < total; n += len(line) {
			if k, err := w.Write(line); k != len(line) || err != nil {
				t.Errorf("Write = %d, %v; want %d, nil", k, err, len(line))
				break
			}
		}
		wrote <- n
	}()
	// The vCPU fills the buffer and the pipe, then waits for room.
	for {
		w.mu.Lock()
		full := len(w.buf)+len(line) > consoleBufferMax
		w.mu.Unlock()
		if full {
			break
		}
		runtime.Gosched()
	}
	w.release() // as Run does once the VM is stopping
	if n := <-wrote; n != total {
		t.Errorf("vCPU wrote %d bytes, want %d", n, total)
	}
	w.flush()
	if d := w.Dropped(); d == 0 || d > total {
		t.Errorf("Dropped = %d, want between 1 and %d", d, total)
	}
}

// TestConsoleSlowHost is a host that takes output slower than the guest
// writes it (a slow pipe reader): while the VM runs the writer waits for
// room, so every byte arrives, in order, and none is dropped.
func TestConsoleSlowHost(t *testing.T) {
	r, wp, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w := newConsoleWriter(wp)
	w.wait = time.Minute // however loaded the machine, the reader drains
	w.start()
	want := make([]byte, 3*consoleBufferMax)
	for i := range want {
		want[i] = byte(i % 251)
	}
	got := make(chan []byte, 1)
	go func() {
		var b bytes.Buffer
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				got <- b.Bytes()
				return
			}
			runtime.Gosched() // a slow reader
		}
	}()
	for p := want; len(p) > 0; p = p[min(len(p), 1000):] {
		w.Write(p[:min(len(p), 1000)])
	}
	w.flush()
	wp.Close()
	if g := <-got; !bytes.Equal(g, want) {
		t.Errorf("host got %d bytes, want the %d written, in order", len(g), len(want))
	}
	if d := w.Dropped(); d != 0 {
		t.Errorf("Dropped = %d, want 0", d)
	}
}

// lockedBuffer is a host console that takes everything.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// TestConsoleFlush checks that output within the buffer reaches the host
// in order and whole by the end of the run, and that output after the
// end is dropped without counting as lost to a stalled host.
func TestConsoleFlush(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes [][]byte
	}{
		{"nothing", nil},
		{"one line", [][]byte{[]byte("hello\n")}},
		{"many", bytes.SplitAfter(bytes.Repeat([]byte("0123456789\n"), 1000), []byte("\n"))},
		{"exactly full", [][]byte{bytes.Repeat([]byte("y"), consoleBufferMax)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var host lockedBuffer
			w := newConsoleWriter(&host)
			// Written before start, so the writer goroutine cannot
			// have taken any yet: nothing may be dropped.
			for _, p := range tc.writes {
				w.Write(p)
			}
			w.start()
			w.flush()
			w.Write([]byte("late"))
			if got, want := host.b.Bytes(), bytes.Join(tc.writes, nil); !bytes.Equal(got, want) {
				t.Errorf("host got %d bytes, want %d", len(got), len(want))
			}
			if d := w.Dropped(); d != 0 {
				t.Errorf("Dropped = %d, want 0", d)
			}
		})
	}
}
