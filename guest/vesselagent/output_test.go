package main

import (
	"bytes"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/console"
)

// bufferConn is a host side that takes everything.
type bufferConn struct{ bytes.Buffer }

func (*bufferConn) SetWriteDeadline(time.Time) error { return nil }

// TestOutputAfterExit: an exited process's streams are passed on whole
// while data comes, and each is closed once it has been silent for
// outputIdle, as a background process that inherited it may hold it
// for good; outputMax after the exit, whatever its writer or its
// reader (the host) does, the wait ends.
func TestOutputAfterExit(t *testing.T) {
	defer func(d, m time.Duration) { outputIdle, outputMax = d, m }(outputIdle, outputMax)
	outputIdle, outputMax = 200*time.Millisecond, 2*time.Second
	pace := outputIdle / 10 // the writers' own, read before they start
	type stream struct {
		write func(w *os.File) // what the process (and what it left) does with the write end
		want  string           // "": whatever came
		stuck bool             // the host never reads this stream
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
		{"held open by a background process", []stream{{write: held, want: "before exit\n"}}},
		{"one held, one closed", []stream{{write: closed, want: "all\n"}, {write: held, want: "before exit\n"}}},
		{"written more often than outputIdle: not cut", []stream{{write: trickle, want: strings.Repeat("x", 10)}, {write: held, want: "before exit\n"}}},
		{"closed", []stream{{write: closed, want: "all\n"}}},
		{"written without pause: ended at outputMax", []stream{{write: endless}}},
		{"a host that stops reading: ended at outputMax", []stream{{write: closed, stuck: true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var outs []*outputCopy
			var bufs []*bufferConn
			var wg sync.WaitGroup
			for _, s := range tc.streams {
				r, w, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				defer w.Close()
				b := &bufferConn{}
				o := &outputCopy{src: r, dst: b}
				if s.stuck {
					host, guest := net.Pipe() // nobody reads host
					defer host.Close()
					o.dst = guest
				}
				outs, bufs = append(outs, o), append(bufs, b)
				wg.Add(1)
				go func() { defer wg.Done(); o.run() }()
				go s.write(w)
			}
			time.Sleep(pace) // the process runs, then exits
			last := time.Now().Add(outputMax)
			for _, o := range outs {
				o.exited(last)
			}
			copied := make(chan struct{})
			go func() { wg.Wait(); close(copied) }()
			select {
			case <-copied:
			case <-time.After(outputMax + 20*outputIdle):
				t.Fatalf("the streams were still waited for after %v", outputMax+20*outputIdle)
			}
			// Every copy has ended: the buffers are the test's alone.
			for i, s := range tc.streams {
				if got := bufs[i].String(); s.want != "" && got != s.want {
					t.Errorf("stream %d passed on %q, want %q", i, got, s.want)
				}
			}
		})
	}
}

// TestPollableTerminal: a terminal whose slave a background process
// keeps open ends too: its master's data goes through pollableTerminal's
// file, on which read deadlines work (the console's own descriptor is
// blocking).
func TestPollableTerminal(t *testing.T) {
	defer func(d time.Duration) { outputIdle = d }(outputIdle)
	outputIdle = 200 * time.Millisecond
	m, slavePath, err := console.NewPty()
	if err != nil {
		t.Fatalf("a pseudo-terminal: %v", err)
	}
	defer m.Close()
	slave, err := os.OpenFile(slavePath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close() // held, as a background process would
	f, err := pollableTerminal(m)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	slave.WriteString("on the terminal\n")
	b := &bufferConn{}
	o := &outputCopy{src: f, dst: b}
	done := make(chan struct{})
	go func() { defer close(done); o.run() }()
	time.Sleep(outputIdle / 2)
	o.exited(time.Now().Add(time.Minute))
	select {
	case <-done:
	case <-time.After(20 * outputIdle):
		t.Fatal("the terminal held open was still waited for")
	}
	if got := b.String(); !strings.Contains(got, "on the terminal") {
		t.Errorf("passed on %q", got)
	}
	// The console's descriptor still takes ioctls.
	if _, err := m.Size(); err != nil {
		t.Errorf("the console's window size: %v", err)
	}
}
