package agentproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestRoundTrip(t *testing.T) {
	var b bytes.Buffer
	in := []Request{
		{ID: 1, Op: OpCreate, Container: "c1", IO: &ProcessIO{Stdin: true},
			Create: &Create{Spec: &specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"echo", "hi"}}}, ImageDisk: "vessel-image", User: "nobody"}},
		{ID: 2, Op: OpSignal, Container: "c1", Signal: 15},
		{ID: 3, Op: OpResize, Container: "c1", Exec: "e1", Size: &specs.Box{Height: 24, Width: 80}},
	}
	for _, r := range in {
		if err := Write(&b, r); err != nil {
			t.Fatal(err)
		}
	}
	for i := range in {
		var r Request
		if err := Read(&b, &r); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if r.ID != in[i].ID || r.Op != in[i].Op || r.Container != in[i].Container {
			t.Errorf("frame %d: got %+v, want %+v", i, r, in[i])
		}
	}
	if got := in[0].Create.Spec.Process.Args; len(got) != 2 {
		t.Errorf("args %q", got)
	}
	var r Request
	if err := Read(&b, &r); err != io.EOF {
		t.Errorf("read past the last frame: %v, want io.EOF", err)
	}
}

func TestReadMalformed(t *testing.T) {
	frame := func(n uint32, body string) []byte {
		b := binary.BigEndian.AppendUint32(nil, n)
		return append(b, body...)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"too large", frame(MaxFrame+1, ""), ErrFrame},
		{"not JSON", frame(3, "{x}"), ErrFrame},
		{"cut short", frame(10, "{}"), io.ErrUnexpectedEOF},
		{"cut header", []byte{0, 0}, io.ErrUnexpectedEOF},
	} {
		var r Reply
		if err := Read(bytes.NewReader(tc.in), &r); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// FuzzRead: frames come from the guest (Replies, Hellos) and the host;
// none may crash the reader or make it allocate beyond MaxFrame.
func FuzzRead(f *testing.F) {
	var b bytes.Buffer
	Write(&b, Hello{Version: Version, Role: RoleStream, Stream: &StreamID{Container: "c", Name: Stdout}})
	f.Add(b.Bytes())
	b.Reset()
	Write(&b, Reply{ID: 0, Event: EventExit, Container: "c", Status: 137})
	f.Add(b.Bytes())
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			var h Hello
			if err := Read(r, &h); err != nil {
				return
			}
		}
	})
}
