package container

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unicode/utf8"

	"github.com/vesselvm/vessel/internal/shmdir"
)

func TestLog(t *testing.T) {
	p := t.TempDir() + "/log.json"
	l, err := OpenLog(p, DefaultLogOptions)
	if err != nil {
		t.Fatal(err)
	}
	out, errw := l.Writer("stdout"), l.Writer("stderr")
	out.Write([]byte("one\n"))
	errw.Write([]byte("oops\n"))
	out.Write([]byte("two\n"))
	l.Close()
	// A torn last line, as while the container writes, is skipped.
	f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"log":"tor`)
	f.Close()
	var o, e bytes.Buffer
	if err := CopyLog(p, &o, &e); err != nil {
		t.Fatal(err)
	}
	if o.String() != "one\ntwo\n" || e.String() != "oops\n" {
		t.Errorf("replayed stdout %q stderr %q", o.String(), e.String())
	}
}

// logBytes is what the log at path and its rotated files take.
func logBytes(t *testing.T, path string) (total int64, files int) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Dir(path))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), filepath.Base(path)) {
			fi, _ := e.Info()
			total += fi.Size()
			files++
		}
	}
	return total, files
}

// TestLogRotation: a log never takes more than max-size*max-file (plus
// a line), however much and whatever the container writes, and its
// replay is the tail of the output, in order.
func TestLogRotation(t *testing.T) {
	lines := func(i int) string { return fmt.Sprintf("line %d\n", i) }
	// Control bytes grow 6 times as JSON escapes; a chunk larger than a
	// line is split.
	control := func(i int) string { return strings.Repeat("\x01", 3000) + fmt.Sprintf("line %d\n", i) }
	for _, tc := range []struct {
		o     LogOptions
		name  string
		chunk func(i int) string
		n     int
	}{
		{LogOptions{MaxSize: 1000, MaxFiles: 1}, "lines", lines, 300},
		{LogOptions{MaxSize: 1000, MaxFiles: 3}, "lines", lines, 300},
		{LogOptions{MaxSize: 64 << 10, MaxFiles: 2}, "lines", lines, 2000},
		{LogOptions{MaxSize: 1, MaxFiles: 4}, "lines", lines, 100},
		{LogOptions{MaxSize: 1000, MaxFiles: 1}, "control bytes", control, 10},
		{LogOptions{MaxSize: 4000, MaxFiles: 3}, "control bytes", control, 10},
		{LogOptions{MaxSize: 64 << 10, MaxFiles: 2}, "control bytes", control, 20},
		{LogOptions{MaxSize: 200 << 10, MaxFiles: 2}, "long write", func(int) string { return strings.Repeat("\x01", 100000) + "\n" }, 5},
	} {
		o := tc.o
		t.Run(fmt.Sprintf("%s %d*%d", tc.name, o.MaxSize, o.MaxFiles), func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "log.json")
			l, err := OpenLog(p, o)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			// A file holds max-size bytes, or one line if that is more.
			maxLine := int64(len(`{"log":"","stream":"stdout","time":"2006-01-02T15:04:05.999999999Z"}`+"\n") + 6*o.entryLimit())
			maxFile := max(o.MaxSize, maxLine)
			var all strings.Builder
			for i := range tc.n {
				c := tc.chunk(i)
				all.WriteString(c)
				if _, err := l.Writer("stdout").Write([]byte(c)); err != nil {
					t.Fatal(err)
				}
				if total, files := logBytes(t, p); total > maxFile*int64(o.MaxFiles) || files > o.MaxFiles {
					t.Fatalf("after %d writes the log takes %d bytes in %d files, over %d*%d", i+1, total, files, maxFile, o.MaxFiles)
				}
			}
			var out, errw bytes.Buffer
			if err := CopyLog(p, &out, &errw); err != nil {
				t.Fatal(err)
			}
			got := out.String()
			if !strings.HasSuffix(all.String(), got) || len(got) == all.Len() || errw.Len() != 0 {
				t.Fatalf("replayed %d bytes (stderr %d), want a tail of the %d written that rotation shortened", len(got), errw.Len(), all.Len())
			}
			// Every file but the one being written was full: it
			// held at least max-size less a line.
			if want := (int64(o.MaxFiles) - 1) * max(o.MaxSize-maxLine, 0) / 6; int64(len(got)) < want {
				t.Errorf("replayed %d bytes, want at least %d", len(got), want)
			}
		})
	}
}

// TestLogReopen: a log opened again goes on from the files there are,
// dropping rotated files beyond its max-file.
func TestLogReopen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log.json")
	for i, o := range []LogOptions{{MaxSize: 100, MaxFiles: 5}, {MaxSize: 100, MaxFiles: 2}} {
		l, err := OpenLog(p, o)
		if err != nil {
			t.Fatal(err)
		}
		for j := range 50 {
			fmt.Fprintf(l.Writer("stderr"), "run %d line %d\n", i, j)
		}
		l.Close()
		if _, files := logBytes(t, p); files != o.MaxFiles {
			t.Errorf("%d files with max-file %d", files, o.MaxFiles)
		}
	}
	var out, errw bytes.Buffer
	if err := CopyLog(p, &out, &errw); err != nil || !strings.HasSuffix(errw.String(), "run 1 line 49\n") || out.Len() != 0 {
		t.Errorf("CopyLog = %v, stderr %q", err, errw.String())
	}
}

func TestCopyLogMissing(t *testing.T) {
	var out bytes.Buffer
	if err := CopyLog(filepath.Join(t.TempDir(), "log.json"), &out, &out); err != nil || out.Len() != 0 {
		t.Errorf("CopyLog of a log never written = %v, %q; want nothing", err, out.String())
	}
}

func TestParseLogOpts(t *testing.T) {
	for _, tc := range []struct {
		opts []string
		want LogOptions
		err  string
	}{
		{nil, DefaultLogOptions, ""},
		{[]string{"max-size=10m", "max-file=3"}, LogOptions{10_000_000, 3}, ""},
		{[]string{"max-size=1k"}, LogOptions{1000, DefaultLogOptions.MaxFiles}, ""},
		{[]string{"max-size=1.5g"}, LogOptions{1_500_000_000, DefaultLogOptions.MaxFiles}, ""},
		{[]string{"max-size=20MB", "max-file=1"}, LogOptions{20_000_000, 1}, ""},
		{[]string{"max-size=2 kib"}, LogOptions{2000, DefaultLogOptions.MaxFiles}, ""},
		{[]string{"max-size=512"}, LogOptions{512, DefaultLogOptions.MaxFiles}, ""},
		{[]string{"max-file=7"}, LogOptions{DefaultLogOptions.MaxSize, 7}, ""},
		{[]string{"max-size=0"}, LogOptions{}, "positive"},
		{[]string{"max-size=-1"}, LogOptions{}, "max-size"},
		{[]string{"max-size=10x"}, LogOptions{}, "unknown unit"},
		{[]string{"max-size=m"}, LogOptions{}, "max-size"},
		{[]string{"max-size="}, LogOptions{}, "max-size"},
		{[]string{"max-size=.5m"}, LogOptions{}, "max-size"},
		{[]string{"max-size=1e9"}, LogOptions{}, "unknown unit"},
		{[]string{"max-size=10i"}, LogOptions{}, "unknown unit"},
		{[]string{"max-size=99999999999999t"}, LogOptions{}, "too large"},
		{[]string{"max-file=0"}, LogOptions{}, "max-file"},
		{[]string{"max-file=-1"}, LogOptions{}, "max-file"},
		{[]string{"max-file=two"}, LogOptions{}, "max-file"},
		{[]string{"compress=true"}, LogOptions{}, "unknown option"},
		{[]string{"max-size"}, LogOptions{}, "KEY=VALUE"},
	} {
		got, err := ParseLogOpts(tc.opts)
		if tc.err == "" && (err != nil || got != tc.want) || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("ParseLogOpts(%q) = %+v, %v; want %+v, error with %q", tc.opts, got, err, tc.want, tc.err)
		}
	}
}

// FuzzLog: whatever bytes the container writes, in whatever chunks,
// the log replays them (valid UTF-8 exactly: splitting a long write
// never cuts a character) while it is not rotated.
func FuzzLog(f *testing.F) {
	f.Add([]byte("hello\n"), uint16(0))
	f.Add(bytes.Repeat([]byte("é"), maxEntry), uint16(1))
	f.Add(bytes.Repeat([]byte("\x01"), 3*maxEntry+5), uint16(40000))
	f.Add(append(bytes.Repeat([]byte("a"), maxEntry-1), "€€"...), uint16(3))
	f.Add([]byte("\x00\x01\xff\xfe"), uint16(2))
	// One directory for all inputs, in a tmpfs where there is one: a
	// directory made and removed per input on a disk took most of the
	// time (2 minutes for make test's 50000 inputs).
	dir := shmdir.Dir(f)
	p := filepath.Join(dir, "log.json")
	f.Fuzz(func(t *testing.T, data []byte, cut uint16) {
		os.Remove(p)
		l, err := OpenLog(p, LogOptions{MaxSize: 1 << 30, MaxFiles: 1})
		if err != nil {
			t.Fatal(err)
		}
		w := l.Writer("stdout")
		k := min(int(cut), len(data))
		w.Write(data[:k])
		w.Write(data[k:])
		l.Close()
		var out bytes.Buffer
		if err := CopyLog(p, &out, &out); err != nil {
			t.Fatal(err)
		}
		if utf8.Valid(data[:k]) && utf8.Valid(data[k:]) && !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("replayed %q, want %q", out.Bytes(), data)
		}
		if !utf8.Valid(data) && out.Len() == 0 && len(data) > 0 {
			t.Fatalf("nothing replayed of %d bytes", len(data))
		}
	})
}

// TestLogFull: with OnError set, a log whose writes fail (here on
// /dev/full, as on a full file system) reports the error once and
// swallows the output from then on, so that the container's output keeps
// flowing; without it, the writer returns the error.
func TestLogFull(t *testing.T) {
	for _, report := range []bool{false, true} {
		t.Run(fmt.Sprintf("OnError=%v", report), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "log.json")
			if err := os.Symlink("/dev/full", path); err != nil {
				t.Fatal(err)
			}
			l, err := OpenLog(path, LogOptions{MaxSize: 1 << 20, MaxFiles: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			var errs []error
			if report {
				l.OnError(func(err error) { errs = append(errs, err) })
			}
			w := l.Writer("stdout")
			for i := 0; i < 3; i++ {
				n, err := w.Write([]byte("output\n"))
				if report && (n != 7 || err != nil) {
					t.Errorf("write %d: %d, %v; want it swallowed", i, n, err)
				}
				if !report && !errors.Is(err, syscall.ENOSPC) {
					t.Errorf("write %d: %d, %v; want ENOSPC", i, n, err)
				}
			}
			if report && (len(errs) != 1 || !errors.Is(errs[0], syscall.ENOSPC)) {
				t.Errorf("OnError got %v, want one ENOSPC", errs)
			}
		})
	}
}
