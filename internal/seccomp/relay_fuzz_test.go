package seccomp

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzRelay: Relay reads what a filtered process writes, and the user
// network helper's is read by its VMM, so it is fed hostile bytes: it
// never panics, passes on every byte of output that holds no crash
// report unchanged, and whatever it holds back it replaces by one line
// naming a call, in chunks of any size.
func FuzzRelay(f *testing.F) {
	report, err := os.ReadFile(filepath.Join("testdata", "getppid-report.txt"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte("hello\n"), uint8(7))
	f.Add(append([]byte("before\n"), report...), uint8(3))
	f.Add(append(append([]byte{}, report...), "more\n"...), uint8(64))
	f.Add([]byte("SIGSYS: bad system call\nPC=0x1\nrax    0xffffffffffffffff\ngs     0x0\n"), uint8(1))
	f.Fuzz(func(t *testing.T, in []byte, n uint8) {
		var out bytes.Buffer
		line := Relay(&chunked{data: bytes.Clone(in), n: int(n)%4096 + 1}, &out, "user network helper")
		if line == "" {
			if !bytes.Equal(out.Bytes(), in) {
				t.Fatalf("no report, yet the output changed:\nin  %q\nout %q", in, out.Bytes())
			}
			return
		}
		if !bytes.HasPrefix(in, out.Bytes()) || !bytes.Contains(in[out.Len():], sigsysMark) {
			t.Fatalf("a report replaced, yet the output %q is not the input's part before it (%q)", out.Bytes(), in)
		}
		if strings.ContainsAny(line, "\n\r") || !strings.HasPrefix(line, "vessel: seccomp: the user network helper made a system call outside its filter, ") {
			t.Fatalf("the line %q", line)
		}
	})
}
