package vmm

import (
	"bytes"
	"os"
	"sync"
	"testing"
)

// TestConsoleStalledHost is the stop path with a host stdout that never
// drains (a pipe nobody reads): a vCPU writing more than the buffer holds
// must get through its writes, so that Run's wait for the vCPUs and then
// the flush both return. Before the fix the vCPU's Write blocked on the
// full buffer for good and Stop never returned.
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
	var vcpus sync.WaitGroup
	vcpus.Add(1)
	go func() { // a vCPU printing on the serial console
		defer vcpus.Done()
		for n := 0; n < total; n += len(line) {
			if k, err := w.Write(line); k != len(line) || err != nil {
				t.Errorf("Write = %d, %v; want %d, nil", k, err, len(line))
				return
			}
		}
	}()
	vcpus.Wait() // as Run waits for its vCPUs after Stop
	w.flush()
	if d := w.Dropped(); d == 0 || d > total {
		t.Errorf("Dropped = %d, want between 1 and %d", d, total)
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
