package main

import "testing"

func TestResolvConfText(t *testing.T) {
	for _, tc := range []struct {
		servers, search []string
		want            string
	}{
		{nil, nil, ""},
		{[]string{"192.168.127.1"}, nil, "nameserver 192.168.127.1\n"},
		{[]string{"1.1.1.1", "9.9.9.9"}, []string{"vessel.internal", "example.org"},
			"nameserver 1.1.1.1\nnameserver 9.9.9.9\nsearch vessel.internal example.org\n"},
	} {
		if got := resolvConfText(tc.servers, tc.search); got != tc.want {
			t.Errorf("resolvConfText(%q, %q) = %q, want %q", tc.servers, tc.search, got, tc.want)
		}
	}
}
