package benchutil

import "testing"

// TestFirstLine: the first line that says something, past docker's
// warnings.
func TestFirstLine(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"one\ntwo\n", "one"},
		{"\n  one  \n", "one"},
		{"WARNING: The requested image's platform (unknown) does not match\ndocker: Error response from daemon: boom.\n", "docker: Error response from daemon: boom."},
		{"WARNING: only a warning\n", "WARNING: only a warning"},
	} {
		if got := FirstLine([]byte(tc.in)); got != tc.want {
			t.Errorf("FirstLine(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
