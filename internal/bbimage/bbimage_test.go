package bbimage

import (
	"archive/tar"
	"io"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

func TestBuild(t *testing.T) {
	img, err := Build()
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil || cf.Config.WorkingDir != Config.WorkingDir || len(cf.Config.Cmd) == 0 {
		t.Fatalf("config %+v, %v", cf, err)
	}
	want := map[string]bool{"bin/busybox": false, "bin/sh": false, "etc/passwd": false, "www/index.html": false}
	tr := tar.NewReader(mutate.Extract(img))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := want[h.Name]; ok {
			want[h.Name] = true
		}
	}
	for n, found := range want {
		if !found {
			t.Errorf("the image lacks %s", n)
		}
	}
}
