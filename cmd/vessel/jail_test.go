package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/internal/vmmproc"
	"github.com/vesselvm/vessel/vmm"
)

func TestJailIDs(t *testing.T) {
	for _, tc := range []struct {
		in       string
		uid, gid int
		ok       bool
	}{
		{"65534:65534", 65534, 65534, true},
		{"1000", 1000, 1000, true},
		{"1000:2000", 1000, 2000, true},
		{"0", 0, 0, false}, // root is no jail user
		{"1000:0", 0, 0, false},
		{"-1", 0, 0, false},
		{"nobody", 0, 0, false},
		{"1:2:3", 0, 0, false},
		{"", 0, 0, false},
		{"4294967295", 0, 0, false},
	} {
		uid, gid, err := jailFlags{user: tc.in}.ids()
		if (err == nil) != tc.ok || tc.ok && (uid != tc.uid || gid != tc.gid) {
			t.Errorf("ids(%q) = %d, %d, %v; want %d, %d, ok %v", tc.in, uid, gid, err, tc.uid, tc.gid, tc.ok)
		}
	}
}

// TestWireFromHostileVMM: what a guest-owned jailed VMM process sends
// vessel is bounded (an endless message fails to decode, it does not grow
// vessel's memory) and its text reaches the user cleaned: no escape
// sequences, at most maxTailLines console lines.
func TestWireFromHostileVMM(t *testing.T) {
	// An endless result: a console line that never ends.
	endless := io.MultiReader(strings.NewReader(`{"Result":{"ConsoleTail":["`), &repeatReader{b: 'A'})
	var m vmmproc.Msg
	if err := wireDecoder(endless).Decode(&m); err == nil {
		t.Fatal("an endless message decoded")
	}
	// A result within bounds, with escape sequences and many lines.
	r := vmmproc.Result{Detail: "crash\x1b]0;owned\x07\x1b[2J", ConsoleTail: make([]string, 1000)}
	for i := range r.ConsoleTail {
		r.ConsoleTail[i] = fmt.Sprintf("line %d \x1b[31mred\x1b[0m", i)
	}
	b, err := json.Marshal(vmmproc.Msg{Result: &r})
	if err != nil {
		t.Fatal(err)
	}
	m = vmmproc.Msg{}
	if err := wireDecoder(bytes.NewReader(b)).Decode(&m); err != nil || m.Result == nil {
		t.Fatalf("decode: %v", err)
	}
	res := wireResult(m.Result)
	if strings.ContainsRune(res.Detail, 0x1b) || strings.ContainsRune(res.Detail, 0x07) {
		t.Errorf("Detail %q keeps control characters", res.Detail)
	}
	if len(res.ConsoleTail) != maxTailLines || !strings.HasPrefix(res.ConsoleTail[maxTailLines-1], "line 999 ") {
		t.Errorf("console tail: %d lines, last %q; want the last %d", len(res.ConsoleTail), res.ConsoleTail[len(res.ConsoleTail)-1], maxTailLines)
	}
	for _, l := range res.ConsoleTail {
		if strings.ContainsRune(l, 0x1b) {
			t.Errorf("console line %q keeps an escape", l)
		}
	}
}

// repeatReader reads b forever.
type repeatReader struct{ b byte }

func (r *repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = r.b
	}
	return len(p), nil
}

// A jailed VMM's refused snapshot is vmm.ErrSnapshot on vessel's side (a
// run then drops the template and boots); other errors are not.
func TestWireErrorSnapshot(t *testing.T) {
	refused := wireErr(&vmmproc.Error{Usage: true, Msg: "unusable snapshot: \x1b[2Jcorrupt", Snapshot: true})
	if !errors.Is(refused, vmm.ErrSnapshot) || strings.Contains(refused.Error(), "\x1b") {
		t.Errorf("refused snapshot: %q, Is ErrSnapshot %v", refused, errors.Is(refused, vmm.ErrSnapshot))
	}
	if other := wireErr(&vmmproc.Error{Msg: "unusable snapshot (said the guest)"}); errors.Is(other, vmm.ErrSnapshot) {
		t.Error("an error that only says so is ErrSnapshot")
	}
}
