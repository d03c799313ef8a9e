package container

import (
	"errors"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func strp(s string) *string { return &s }

func TestSpecCommand(t *testing.T) {
	img := v1.Config{Entrypoint: []string{"/bin/ep"}, Cmd: []string{"default", "args"}}
	for _, tc := range []struct {
		name string
		cfg  v1.Config
		o    Options
		want []string
	}{
		{"image defaults", img, Options{}, []string{"/bin/ep", "default", "args"}},
		{"args replace cmd", img, Options{Args: []string{"x"}}, []string{"/bin/ep", "x"}},
		{"entrypoint drops cmd", img, Options{Entrypoint: strp("/bin/sh")}, []string{"/bin/sh"}},
		{"entrypoint and args", img, Options{Entrypoint: strp("/bin/sh"), Args: []string{"-c", "true"}}, []string{"/bin/sh", "-c", "true"}},
		{"empty entrypoint", img, Options{Entrypoint: strp(""), Args: []string{"echo", "hi"}}, []string{"echo", "hi"}},
		{"cmd only", v1.Config{Cmd: []string{"sh"}}, Options{}, []string{"sh"}},
		{"args only", v1.Config{}, Options{Args: []string{"true"}}, []string{"true"}},
	} {
		s, _, err := Spec(tc.cfg, tc.o)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !slices.Equal(s.Process.Args, tc.want) {
			t.Errorf("%s: args %q, want %q", tc.name, s.Process.Args, tc.want)
		}
	}
	for _, o := range []Options{{}, {Entrypoint: strp("")}} {
		if _, _, err := Spec(v1.Config{}, o); !errors.Is(err, ErrNoCommand) {
			t.Errorf("no command with %+v: %v, want ErrNoCommand", o, err)
		}
	}
}

func TestSpecEnv(t *testing.T) {
	t.Setenv("VESSEL_TEST_HOST", "from-host")
	img := v1.Config{Env: []string{"PATH=/img/bin", "A=1", "B=2"}, Cmd: []string{"sh"}}
	s, _, err := Spec(img, Options{Env: []string{"B=3", "C=4", "VESSEL_TEST_HOST", "VESSEL_TEST_UNSET"}, Hostname: "h1", Terminal: true})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"PATH=/img/bin", "A=1", "B=3", "C=4", "VESSEL_TEST_HOST=from-host", "HOSTNAME=h1", "TERM=xterm"}
	if !slices.Equal(s.Process.Env, want) {
		t.Errorf("env %q, want %q", s.Process.Env, want)
	}
	s, _, _ = Spec(v1.Config{Cmd: []string{"sh"}}, Options{})
	if !slices.Equal(s.Process.Env, []string{DefaultPath}) {
		t.Errorf("env without image PATH: %q", s.Process.Env)
	}
	if _, _, err := Spec(img, Options{Env: []string{"=x"}}); err == nil {
		t.Error("an empty variable name was accepted")
	}
	// An image's entries that are not KEY=VALUE (which the guest's runc
	// would refuse at start) are an error before the VM boots.
	for _, bad := range []string{"BARE", "=x", "A=b\x00c"} {
		if _, _, err := Spec(v1.Config{Env: []string{"A=1", bad}, Cmd: []string{"sh"}}, Options{}); err == nil || !strings.Contains(err.Error(), "KEY=VALUE") {
			t.Errorf("image environment entry %q: %v, want an error", bad, err)
		}
	}
}

func TestSpecWorkdirUser(t *testing.T) {
	img := v1.Config{Cmd: []string{"sh"}, WorkingDir: "/app", User: "app"}
	for _, tc := range []struct {
		o         Options
		cwd, user string
		wantErr   bool
	}{
		{Options{}, "/app", "app", false},
		{Options{Workdir: "/tmp", User: "1000:1000"}, "/tmp", "1000:1000", false},
		{Options{Workdir: "rel"}, "", "", true},
	} {
		s, user, err := Spec(img, tc.o)
		if tc.wantErr {
			if err == nil {
				t.Errorf("%+v: no error", tc.o)
			}
			continue
		}
		if err != nil || s.Process.Cwd != tc.cwd || user != tc.user {
			t.Errorf("%+v: cwd %q user %q (%v), want %q %q", tc.o, s.Process.Cwd, user, err, tc.cwd, tc.user)
		}
	}
	s, _, _ := Spec(v1.Config{Cmd: []string{"sh"}}, Options{})
	if s.Process.Cwd != "/" {
		t.Errorf("default cwd %q", s.Process.Cwd)
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == "network" {
			t.Error("the container has a network namespace: it should share the VM's")
		}
	}
}

func TestOverrideEnv(t *testing.T) {
	got := OverrideEnv([]string{"A=1", "B=2"}, []string{"B=3", "C=4", "A=5"})
	if want := []string{"A=5", "B=3", "C=4"}; !slices.Equal(got, want) {
		t.Errorf("OverrideEnv = %q, want %q", got, want)
	}
}

func TestSpecPidsLimit(t *testing.T) {
	s, _, _ := Spec(v1.Config{Cmd: []string{"sh"}}, Options{PidsLimit: 64})
	if p := s.Linux.Resources.Pids; p == nil || p.Limit == nil || *p.Limit != 64 {
		t.Errorf("pids limit %+v, want 64", p)
	}
	if s, _, _ := Spec(v1.Config{Cmd: []string{"sh"}}, Options{}); s.Linux.Resources.Pids != nil {
		t.Error("a pids limit without --pids-limit")
	}
}

// The container's processes are the OOM killer's to pick, not the agent.
func TestSpecOOMScore(t *testing.T) {
	s, _, _ := Spec(v1.Config{Cmd: []string{"sh"}}, Options{})
	if s.Process.OOMScoreAdj == nil || *s.Process.OOMScoreAdj != 0 {
		t.Errorf("oom_score_adj %v, want 0", s.Process.OOMScoreAdj)
	}
}

// The container runs under docker's default seccomp profile: system
// calls outside its allow list fail with EPERM, and those it allows only
// with a capability the container lacks (reboot: CAP_SYS_BOOT) are not
// allowed.
func TestSpecSeccomp(t *testing.T) {
	s, _, err := Spec(v1.Config{Cmd: []string{"sh"}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	sc := s.Linux.Seccomp
	if sc == nil {
		t.Fatal("no seccomp profile")
	}
	if sc.DefaultAction != specs.ActErrno {
		t.Errorf("default action %s, want %s", sc.DefaultAction, specs.ActErrno)
	}
	allowed := map[string]bool{}
	for _, rule := range sc.Syscalls {
		if rule.Action == specs.ActAllow && len(rule.Args) == 0 {
			for _, name := range rule.Names {
				allowed[name] = true
			}
		}
	}
	for name, want := range map[string]bool{"read": true, "clone3": false, "reboot": false, "kexec_load": false, "mount": false, "bpf": false} {
		if allowed[name] != want {
			t.Errorf("%s allowed without conditions: %v, want %v", name, allowed[name], want)
		}
	}
}
