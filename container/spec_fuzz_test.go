package container

import (
	"bytes"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// FuzzSpec parses an image's config file (bytes from the image) and
// makes the container's runtime configuration from it: no panic, and a
// configuration made has a command, an absolute working directory and
// an environment of KEY=VALUE entries with the container's HOSTNAME.
func FuzzSpec(f *testing.F) {
	for _, s := range []string{
		`{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin","A=b"],"Cmd":["sh"],"WorkingDir":"/srv","User":"app"}}`,
		`{"config":{"Entrypoint":["/entry","x"],"Cmd":["y"],"Env":["HOSTNAME=img","TERM=dumb","BARE"]}}`,
		`{"config":{"Cmd":[],"WorkingDir":"relative"}}`,
		`{"config":{"Env":["=x","A"],"Cmd":["\u0000"]}}`,
	} {
		f.Add([]byte(s), "")
		f.Add([]byte(s), "cmd")
	}
	f.Fuzz(func(t *testing.T, data []byte, arg string) {
		cf, err := v1.ParseConfigFile(bytes.NewReader(data))
		if err != nil {
			return
		}
		var o Options
		if arg != "" {
			o.Args = []string{arg}
		}
		o.Hostname = "fuzzhost"
		s, _, err := Spec(cf.Config, o)
		if err != nil {
			return
		}
		if len(s.Process.Args) == 0 {
			t.Error("no command")
		}
		if !strings.HasPrefix(s.Process.Cwd, "/") {
			t.Errorf("working directory %q", s.Process.Cwd)
		}
		host := false
		for _, kv := range s.Process.Env {
			k, _, ok := strings.Cut(kv, "=")
			if !ok || k == "" || strings.ContainsRune(kv, 0) {
				t.Errorf("environment entry %q", kv)
			}
			host = host || k == "HOSTNAME"
		}
		if !host {
			t.Errorf("no HOSTNAME in %q", s.Process.Env)
		}
	})
}
