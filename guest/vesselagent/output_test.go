package main

import (
	"bytes"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestDrainOutputs: an exited process's streams are passed on whole
// while data comes, and closed once every one still open has been
// silent for outputIdle, as a background process that inherited them
// may hold them for good.
func TestDrainOutputs(t *testing.T) {
	defer func(d, m time.Duration) { outputIdle, outputMax = d, m }(outputIdle, outputMax)
	outputIdle, outputMax = 200*time.Millisecond, 2*time.Second
	pace := outputIdle / 10 // the writers' own, read before they start
	type stream struct {
		write func(w *os.File) // what the process (and what it left) does with the write end
		want  string
	}
	held := func(w *os.File) { w.WriteString("before exit\n") } // never closed
	trickle := func(w *os.File) {
		for i := 0; i < 10; i++ {
			w.WriteString("x")
			time.Sleep(2 * pace)
		}
		w.Close()
	}
	closed := func(w *os.File) { w.WriteString("all\n"); w.Close() }
	// A background process that never stops writing.
	endless := func(w *os.File) {
		for {
			if _, err := w.WriteString("y"); err != nil {
				return // the read end was closed
			}
			time.Sleep(pace)
		}
	}
	for _, tc := range []struct {
		name    string
		streams []stream
	}{
		{"held open by a background process", []stream{{held, "before exit\n"}}},
		{"one held, one closed", []stream{{closed, "all\n"}, {held, "before exit\n"}}},
		{"written more often than outputIdle: not cut", []stream{{trickle, strings.Repeat("x", 10)}, {held, "before exit\n"}}},
		{"closed", []stream{{closed, "all\n"}}},
		{"written without pause: closed after outputMax", []stream{{endless, ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var outs []*outputCopy
			var bufs []*bytes.Buffer
			var wg sync.WaitGroup
			var writers []*os.File
			for _, s := range tc.streams {
				r, w, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				writers = append(writers, w)
				o, b := &outputCopy{src: r}, &bytes.Buffer{}
				outs, bufs = append(outs, o), append(bufs, b)
				wg.Add(1)
				go func() { defer wg.Done(); o.run(b) }()
				go s.write(w)
			}
			defer func() {
				for _, w := range writers {
					w.Close()
				}
			}()
			copied := make(chan struct{})
			go func() { wg.Wait(); close(copied) }()
			drained := make(chan struct{})
			go func() { drainOutputs(outs, copied); close(drained) }()
			select {
			case <-drained:
			case <-time.After(outputMax + 20*outputIdle):
				t.Fatalf("the streams were still waited for after %v", outputMax+20*outputIdle)
			}
			// Every copy has ended (drainOutputs waited for copied):
			// the buffers are the test's alone.
			for i, s := range tc.streams {
				if s.want == "" {
					continue // whatever came before the end
				}
				if got := bufs[i].String(); got != s.want {
					t.Errorf("stream %d passed on %q, want %q", i, got, s.want)
				}
			}
		})
	}
}
