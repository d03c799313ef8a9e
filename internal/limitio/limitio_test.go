package limitio

import (
	"bytes"
	"testing"
)

func TestWriter(t *testing.T) {
	for _, tc := range []struct {
		writes []string
		want   string
	}{
		{[]string{"a\n", "b\n"}, "a\nb\n"},
		{[]string{"a\n", "bcdef\n", "g\n"}, "a\n[cut]\n"},
		{[]string{"abcdefghij\n"}, "[cut]\n"},
		{[]string{"abcd\n", "ef\n", "g\n"}, "abcd\n[cut]\n"},
	} {
		var b bytes.Buffer
		w := Writer(&b, 6, "[cut]\n")
		for _, s := range tc.writes {
			if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
				t.Errorf("Write(%q) = %d, %v", s, n, err)
			}
		}
		if b.String() != tc.want {
			t.Errorf("%q: wrote %q, want %q", tc.writes, b.String(), tc.want)
		}
	}
}
