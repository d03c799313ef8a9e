package vmmproc

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestEscapeReader(t *testing.T) {
	for _, tc := range []struct {
		in   string
		out  string
		quit bool
	}{
		{"hello", "hello", false},
		{"ab\x01xcd", "ab", true},
		{"ab\x01Xcd", "ab", true},
		{"a\x01\x01b", "a\x01b", false},
		{"a\x01cb", "a\x01cb", false},
	} {
		quit := false
		r := &escapeReader{r: strings.NewReader(tc.in), quit: func() { quit = true }}
		var buf bytes.Buffer
		_, err := io.Copy(&buf, r)
		if err != nil {
			t.Fatal(err)
		}
		if buf.String() != tc.out || quit != tc.quit {
			t.Errorf("%q: got %q quit=%v, want %q quit=%v", tc.in, buf.String(), quit, tc.out, tc.quit)
		}
	}
}

// TestEscapeAcrossReads: a Ctrl-A at the end of one read and x at the
// start of the next still quits.
func TestEscapeAcrossReads(t *testing.T) {
	quit := false
	r := &escapeReader{r: io.MultiReader(strings.NewReader("a\x01"), strings.NewReader("xb")), quit: func() { quit = true }}
	b, _ := io.ReadAll(r)
	if string(b) != "a" || !quit {
		t.Fatalf("got %q quit=%v", b, quit)
	}
}
