package container

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseVolume(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	wd, _ := os.Getwd()
	for _, tc := range []struct {
		in   string
		want Volume
		err  string // a piece of the error
	}{
		{in: dir + ":/data", want: Volume{HostDir: dir, Destination: "/data"}},
		{in: dir + "/:/data/../srv/:ro", want: Volume{HostDir: dir, Destination: "/srv", ReadOnly: true}},
		{in: dir + ":/data:rw", want: Volume{HostDir: dir, Destination: "/data"}},
		{in: ".:/data", want: Volume{HostDir: wd, Destination: "/data"}},
		{in: dir, err: "want HOSTDIR:PATH"},
		{in: dir + ":", err: "want HOSTDIR:PATH"},
		{in: ":/data", err: "want HOSTDIR:PATH"},
		{in: dir + ":/a:ro:x", err: "want HOSTDIR:PATH"},
		{in: "myvolume:/data", err: "no named volumes"},
		{in: dir + ":data", err: "not absolute"},
		{in: dir + ":/", err: "root"},
		{in: dir + ":/data:z", err: `unknown option "z"`},
		{in: dir + ":/data:ro,rw", err: "want one of ro or rw"},
		{in: dir + ":/data:rw,ro", err: "want one of ro or rw"},
		{in: dir + ":/data:ro,ro", err: "want one of ro or rw"},
		{in: dir + ":/data:", err: `unknown option ""`},
		{in: dir + "/missing:/data", err: "does not exist"},
		{in: file + ":/data", err: "not a directory"},
	} {
		got, err := ParseVolume(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one with %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %+v %v, want %+v", tc.in, got, err, tc.want)
		}
	}
}
