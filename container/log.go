package container

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// logEntry is one line of a container log, in docker's json-file format:
// a chunk of output, the stream it came from, and when.
type logEntry struct {
	Log    string    `json:"log"`
	Stream string    `json:"stream"`
	Time   time.Time `json:"time"`
}

// Log appends a container's output to its log file; its writers for
// stdout and stderr may be used concurrently.
type Log struct {
	mu sync.Mutex
	f  *os.File
	w  *bufio.Writer
}

// OpenLog opens (creating) the log at path for appending.
func OpenLog(path string) (*Log, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("container log: %w", err)
	}
	return &Log{f: f, w: bufio.NewWriter(f)}, nil
}

// Writer returns a writer that logs what it gets as stream ("stdout" or
// "stderr").
func (l *Log) Writer(stream string) io.Writer { return logStream{l, stream} }

type logStream struct {
	l      *Log
	stream string
}

func (s logStream) Write(p []byte) (int, error) {
	b, err := json.Marshal(logEntry{Log: string(p), Stream: s.stream, Time: time.Now().UTC()})
	if err != nil {
		return 0, err
	}
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	s.l.w.Write(b)
	s.l.w.WriteByte('\n')
	// Flush per chunk: `vessel logs` may read while the container runs.
	if err := s.l.w.Flush(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close closes the log file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.w.Flush()
	return l.f.Close()
}

// CopyLog replays the log at path: stdout chunks to stdout, stderr ones
// to stderr, in order. A torn last line (the log being written) is
// left out.
func CopyLog(path string, stdout, stderr io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("container log: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var e logEntry
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		w := stdout
		if e.Stream == "stderr" {
			w = stderr
		}
		if _, err := io.WriteString(w, e.Log); err != nil {
			return err
		}
	}
	return sc.Err()
}
