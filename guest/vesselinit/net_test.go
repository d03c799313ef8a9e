package main

import "testing"

func TestResolvConfText(t *testing.T) {
	for _, tc := range []struct {
		servers []string
		want    string
	}{
		{nil, ""},
		{[]string{"192.168.127.1"}, "nameserver 192.168.127.1\n"},
		{[]string{"1.1.1.1", "9.9.9.9"}, "nameserver 1.1.1.1\nnameserver 9.9.9.9\n"},
	} {
		if got := resolvConfText(tc.servers); got != tc.want {
			t.Errorf("resolvConfText(%q) = %q, want %q", tc.servers, got, tc.want)
		}
	}
}
