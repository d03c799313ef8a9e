package container

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// logEntry is one line of a container log, in docker's json-file format:
// a chunk of output, the stream it came from, and when.
type logEntry struct {
	Log    string    `json:"log"`
	Stream string    `json:"stream"`
	Time   time.Time `json:"time"`
}

// maxEntry is the most output bytes one log line holds; a longer write
// is split, as docker splits messages at 16 KiB. A line takes at most
// entryOverhead bytes and 6 per output byte (a control byte's JSON
// escape).
const (
	maxEntry      = 16 << 10
	minEntry      = 16
	entryOverhead = 128
)

// entryLimit is the most output bytes one log line holds under o: a
// line fits in max-size, unless max-size is below a line of minEntry
// bytes.
func (o LogOptions) entryLimit() int {
	return int(max(minEntry, min(maxEntry, (o.MaxSize-entryOverhead)/6)))
}

// LogOptions bound a container's log, as docker's json-file driver's
// --log-opt max-size and max-file do: the log is rotated when it would
// grow over MaxSize bytes, and MaxFiles files are kept, the one being
// written included, so it takes at most MaxSize*MaxFiles bytes (a file
// holds at least one line, so with a MaxSize below a few hundred bytes
// a file can exceed it by a line).
type LogOptions struct {
	MaxSize  int64
	MaxFiles int
}

// DefaultLogOptions bound a log to max-size=10m and max-file=2. docker's
// json-file keeps everything by default, but vessel's logs live in the
// runtime directory, which is usually in memory: 20 MB at most per
// container, and always at least the last 10 MB.
var DefaultLogOptions = LogOptions{MaxSize: 10_000_000, MaxFiles: 2}

// ParseLogOpts parses docker run's --log-opt KEY=VALUE values: max-size
// (a positive size with docker's decimal units: 10k, 10m, 1.5g) and
// max-file (at least 1). Keys not given keep DefaultLogOptions; any
// other key is an error.
func ParseLogOpts(opts []string) (LogOptions, error) {
	o := DefaultLogOptions
	for _, kv := range opts {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return o, fmt.Errorf("--log-opt %q: want KEY=VALUE", kv)
		}
		switch k {
		case "max-size":
			n, err := parseLogSize(v)
			if err != nil {
				return o, fmt.Errorf("--log-opt max-size=%s: %w", v, err)
			}
			o.MaxSize = n
		case "max-file":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return o, fmt.Errorf("--log-opt max-file=%s: want a whole number of at least 1", v)
			}
			o.MaxFiles = n
		default:
			return o, fmt.Errorf("--log-opt %q: unknown option (vessel has max-size and max-file)", k)
		}
	}
	return o, nil
}

// maxLogSize caps max-size at 1 TB, far beyond any memory a log could
// take, so that sizes never overflow.
const maxLogSize = 1e12

// parseLogSize parses a size as docker's units.FromHumanSize does: a
// decimal number and an optional unit k, m, g or t (powers of 1000, in
// either case, optionally followed by b or ib, still powers of 1000).
func parseLogSize(s string) (int64, error) {
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.ToLower(strings.TrimPrefix(s[i:], " "))
	}
	f, err := strconv.ParseFloat(num, 64)
	if num == "" || strings.HasPrefix(num, ".") || err != nil {
		return 0, errors.New("want a size such as 10m or 1g")
	}
	letter := strings.TrimSuffix(strings.TrimSuffix(unit, "b"), "i")
	mult, ok := map[string]float64{"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[letter]
	switch n := f * mult; {
	case !ok || unit == "i" || unit == "ib":
		return 0, fmt.Errorf("unknown unit %q: want k, m or g", unit)
	case n < 1:
		return 0, errors.New("want a positive size")
	case n > maxLogSize || math.IsInf(n, 0):
		return 0, errors.New("too large")
	default:
		return int64(n), nil
	}
}

// Log appends a container's output to its log file, rotating it by
// size; its writers for stdout and stderr may be used concurrently.
type Log struct {
	mu      sync.Mutex
	path    string
	opts    LogOptions
	f       *os.File
	size    int64 // of f
	rotated int   // rotated files there are: path.1 .. path.<rotated>
	onErr   func(error)
	failed  error // the write that failed, once onErr was told
}

// OnError makes a write that fails (a full file system, say) no longer
// the writers' error: f is called once, with it, and from then on the
// writers discard what they get, so that the container's output still
// flows (to a terminal, and out of the guest) with its log cut short.
// Without it, the writers return the error.
func (l *Log) OnError(f func(error)) {
	l.mu.Lock()
	l.onErr = f
	l.mu.Unlock()
}

// OpenLog opens (creating) the log at path for appending, bounded by o
// (see LogOptions); the rotated files are path.1 (the newest) to
// path.<o.MaxFiles-1>.
func OpenLog(path string, o LogOptions) (*Log, error) {
	if o.MaxSize < 1 || o.MaxFiles < 1 {
		return nil, fmt.Errorf("container log: bad options %+v", o)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("container log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("container log: %w", err)
	}
	l := &Log{path: path, opts: o, f: f, size: fi.Size()}
	rotated, err := rotatedLogs(path)
	if err != nil {
		f.Close()
		return nil, err
	}
	for _, r := range rotated {
		if r.n >= o.MaxFiles { // kept under larger options: over the bound
			os.Remove(r.path)
		} else {
			l.rotated = max(l.rotated, r.n)
		}
	}
	return l, nil
}

// Writer returns a writer that logs what it gets as stream ("stdout" or
// "stderr").
func (l *Log) Writer(stream string) io.Writer { return logStream{l, stream} }

type logStream struct {
	l      *Log
	stream string
}

func (s logStream) Write(p []byte) (int, error) {
	limit := s.l.opts.entryLimit()
	for done := 0; done < len(p); {
		n := entryLen(p[done:], limit)
		b, err := json.Marshal(logEntry{Log: string(p[done : done+n]), Stream: s.stream, Time: time.Now().UTC()})
		if err != nil {
			return done, err
		}
		if err := s.l.append(append(b, '\n')); err != nil {
			if s.l.fail(err) {
				return len(p), nil
			}
			return done, err
		}
		done += n
	}
	return len(p), nil
}

// fail reports err to the OnError function, the first time, and
// whether there is one (the error is then not the writer's).
func (l *Log) fail(err error) bool {
	l.mu.Lock()
	f, first := l.onErr, l.failed == nil
	if f != nil && first {
		l.failed = err
	}
	l.mu.Unlock()
	if f != nil && first {
		f(err)
	}
	return f != nil
}

// entryLen is how much of p the next log line takes: all of it up to
// limit bytes, else limit bytes cut before a UTF-8 sequence that would
// be split.
func entryLen(p []byte, limit int) int {
	if len(p) <= limit {
		return len(p)
	}
	for n := limit; n > limit-utf8.UTFMax && n > 0; n-- {
		if utf8.RuneStart(p[n]) {
			return n
		}
	}
	return limit
}

// append writes one line, rotating first if it would take the file over
// MaxSize. Lines are written whole, unbuffered: `vessel logs` may read
// while the container runs.
func (l *Log) append(line []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return errors.New("container log: closed")
	}
	if l.failed != nil {
		return l.failed // cut short: no line after the gap
	}
	if l.size > 0 && l.size+int64(len(line)) > l.opts.MaxSize {
		if err := l.rotate(); err != nil {
			return err
		}
	}
	n, err := l.f.Write(line)
	if err != nil {
		// A line written in part (the file system filled up) is taken
		// back: the log holds whole lines.
		if n > 0 && l.f.Truncate(l.size) != nil {
			l.size += int64(n)
		}
		return fmt.Errorf("container log: %w", err)
	}
	l.size += int64(n)
	return nil
}

// rotate moves path to path.1 (path.1 to path.2 and so on, the oldest
// beyond MaxFiles-1 overwritten) and starts an empty path; with
// MaxFiles 1 it empties path.
func (l *Log) rotate() error {
	if err := l.f.Close(); err != nil {
		l.f = nil
		return fmt.Errorf("container log: %w", err)
	}
	l.f = nil
	if keep := l.opts.MaxFiles - 1; keep > 0 {
		for i := min(l.rotated, keep-1); i >= 1; i-- {
			if err := os.Rename(rotatedName(l.path, i), rotatedName(l.path, i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("container log: %w", err)
			}
		}
		if err := os.Rename(l.path, rotatedName(l.path, 1)); err != nil {
			return fmt.Errorf("container log: %w", err)
		}
		l.rotated = min(l.rotated+1, keep)
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("container log: %w", err)
	}
	l.f, l.size = f, 0
	return nil
}

// Close closes the log file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

func rotatedName(path string, n int) string { return path + "." + strconv.Itoa(n) }

type rotatedLog struct {
	path string
	n    int
}

// rotatedLogs lists the rotated files of the log at path, oldest
// (highest number) first.
func rotatedLogs(path string) ([]rotatedLog, error) {
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("container log: %w", err)
	}
	prefix := filepath.Base(path) + "."
	var l []rotatedLog
	for _, e := range ents {
		s, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		if n, err := strconv.Atoi(s); err == nil && n > 0 && strconv.Itoa(n) == s {
			l = append(l, rotatedLog{filepath.Join(filepath.Dir(path), e.Name()), n})
		}
	}
	sort.Slice(l, func(i, j int) bool { return l[i].n > l[j].n })
	return l, nil
}

// CopyLog replays the log at path, its rotated files first, oldest
// first: stdout chunks to stdout, stderr ones to stderr, in order. A
// torn last line (the log being written) is left out, and so is a file
// that is gone (rotated away meanwhile, or never made).
func CopyLog(path string, stdout, stderr io.Writer) error {
	rotated, err := rotatedLogs(path)
	if err != nil {
		return err
	}
	for _, r := range rotated {
		if err := copyLogFile(r.path, stdout, stderr); err != nil {
			return err
		}
	}
	return copyLogFile(path, stdout, stderr)
}

func copyLogFile(path string, stdout, stderr io.Writer) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
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
	if err := sc.Err(); err != nil {
		return fmt.Errorf("container log %s: %w", path, err)
	}
	return nil
}

// DiagLimit is how many bytes of the VMM's reports about one container
// (a misbehaving guest driver, one line each) vessel writes: a detached
// container's go to vessel.log in its state directory, usually in
// memory, and a guest can make them in a loop.
const DiagLimit = 1 << 20
