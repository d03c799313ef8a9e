// Package limitio bounds what a writer passes on: reports a guest can
// cause (a misbehaving driver, in a loop) must not fill a log or a
// terminal.
package limitio

import (
	"io"
	"sync"
)

// Writer returns a writer that passes whole writes on to w while they
// total at most n bytes, then writes note once and drops the rest,
// reporting success. It may be used concurrently.
func Writer(w io.Writer, n int64, note string) io.Writer {
	return &writer{w: w, left: n, note: note}
}

type writer struct {
	mu   sync.Mutex
	w    io.Writer
	left int64
	note string
	done bool
}

func (l *writer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.done:
	case int64(len(p)) <= l.left:
		l.left -= int64(len(p))
		if _, err := l.w.Write(p); err != nil {
			return 0, err
		}
	default:
		l.done = true
		io.WriteString(l.w, l.note)
	}
	return len(p), nil
}
