package agentproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
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
		{"empty", frame(0, ""), ErrFrame},
	} {
		var r Reply
		if err := Read(bytes.NewReader(tc.in), &r); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestReadLarge: frames of every size up to MaxFrame arrive whole
// through a reader that hands out a few bytes at a time, as the buffer
// grows.
func TestReadLarge(t *testing.T) {
	for _, size := range []int{10, readChunk - 1, readChunk, readChunk + 1, 3*readChunk + 7, MaxFrame - 100} {
		in := Reply{Error: string(bytes.Repeat([]byte{'x'}, size))}
		var b bytes.Buffer
		if err := Write(&b, in); err != nil {
			t.Fatalf("%d: %v", size, err)
		}
		var out Reply
		if err := Read(iotestHalf{&b}, &out); err != nil {
			t.Fatalf("%d: %v", size, err)
		}
		if out.Error != in.Error {
			t.Errorf("%d: got %d bytes back", size, len(out.Error))
		}
	}
}

// iotestHalf reads at most half of what is asked for, 1 byte at least.
type iotestHalf struct{ r io.Reader }

func (h iotestHalf) Read(p []byte) (int, error) { return h.r.Read(p[:max(1, len(p)/2)]) }

// TestReadHello: a Hello is bounded by MaxHello, however long the
// frame it declares; one that fits reads as any frame.
func TestReadHello(t *testing.T) {
	frame := func(n uint32, body string) []byte {
		return append(binary.BigEndian.AppendUint32(nil, n), body...)
	}
	ok := `{"version":1,"role":"stream","stream":{"container":"c","name":"stdout"}}`
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"fits", frame(uint32(len(ok)), ok), nil},
		{"MaxHello", frame(MaxHello, ok+string(bytes.Repeat([]byte{' '}, MaxHello-len(ok)))), nil},
		{"one byte more", frame(MaxHello+1, ok), ErrFrame},
		{"MaxFrame", frame(MaxFrame, ok), ErrFrame},
	} {
		var h Hello
		err := ReadHello(bytes.NewReader(tc.in), &h)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if err == nil && (h.Role != RoleStream || h.Stream == nil || h.Stream.Name != Stdout) {
			t.Errorf("%s: read %+v", tc.name, h)
		}
	}
}

// TestReadAllocatesWhatArrives: a frame that declares MaxFrame and ends
// after a few bytes costs memory for those bytes, not for MaxFrame (a
// hostile guest could otherwise make the host hold MaxFrame per
// connection by sending a header and stalling).
func TestReadAllocatesWhatArrives(t *testing.T) {
	in := append(binary.BigEndian.AppendUint32(nil, MaxFrame), bytes.Repeat([]byte{'x'}, 1000)...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var r Reply
	err := Read(bytes.NewReader(in), &r)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Read: %v, want io.ErrUnexpectedEOF", err)
	}
	// Generous: the first chunk, and whatever else the runtime allocated
	// meanwhile, but far below the declared MaxFrame.
	if d := after.TotalAlloc - before.TotalAlloc; d > MaxFrame/8 {
		t.Errorf("reading 1000 bytes of a frame declaring %d allocated %d bytes", MaxFrame, d)
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
		for i := 0; ; i++ {
			var h Hello
			read := Read
			if i%2 == 0 {
				read = func(r io.Reader, v any) error { return ReadHello(r, v.(*Hello)) }
			}
			if err := read(r, &h); err != nil {
				return
			}
		}
	})
}
