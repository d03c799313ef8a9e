//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// templateOut is what a TestRuntimeTemplate container prints.
var templateOut = regexp.MustCompile(`btime=(\d+) mac=(\S+) inet=(\S*) inet6=(\S*) bind=(\S*) rand=(\S+)`)

// TestRuntimeTemplate: vessel-runtime restores a container's VM from a
// template, as vessel run does. Two containers of one layout (a
// CNI-style network namespace each, with IPv4 and IPv6, and a directory
// bind each) come from one template: their kernels booted at the same
// time (the template's), yet each has its own random numbers, its own
// interface's MAC and addresses, reaches its own host end, and sees only
// its own bind. A container of another Kubernetes namespace gets a
// template of its own, --no-template boots, and another layout (no
// network) gets a template of its own.
func TestRuntimeTemplate(t *testing.T) {
	becomeSubreaper(t)
	cache := t.TempDir()
	t.Setenv("VESSEL_TEMPLATE_DIR", cache)
	ctx := context.Background()
	templates := func() int {
		t.Helper()
		m, err := filepath.Glob(filepath.Join(cache, "*", "snapshot", "vm.state"))
		if err != nil {
			t.Fatal(err)
		}
		return len(m)
	}
	type result struct {
		btime, mac, inet, inet6, bind, rand string
		fromHost                            string
	}
	// tenant, if set, is the next container's pod namespace, as
	// containerd's CRI plugin annotates it.
	tenant := ""
	// run runs one container printing what templateOut matches, in
	// network namespace ns (made as CNI does, 10.n.0.0/24) or, with n 0,
	// a new one without interfaces.
	run := func(name string, n int, extra ...string) result {
		t.Helper()
		data := t.TempDir()
		if err := os.WriteFile(filepath.Join(data, "in"), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
		ns := "vessel-tpl-" + name
		var got <-chan string
		dial := "true"
		if n != 0 {
			cniNetns(t, ns, "vtplh-"+name, n)
			hostLn, err := net.Listen("tcp", fmt.Sprintf("10.%d.0.1:0", n))
			if err != nil {
				t.Fatal(err)
			}
			defer hostLn.Close()
			got = acceptOnce(hostLn)
			dial = fmt.Sprintf("echo from-%s | nc -w 20 10.%d.0.1 %d", name, n, hostLn.Addr().(*net.TCPAddr).Port)
		}
		r, state := runtimeClient(t)
		r.ExtraArgs = extra
		bundle, spec := makeBundle(t, "sh", "-c",
			"echo btime=$(awk '/^btime/ {print $2}' /proc/stat) mac=$(cat /sys/class/net/eth0/address 2>/dev/null || echo none)"+
				" inet=$(ip -4 addr show eth0 2>/dev/null | grep -o 'inet [0-9./]*' | cut -d' ' -f2)"+
				" inet6=$(ip -6 addr show eth0 2>/dev/null | grep -o 'inet6 fd[0-9a-f:/]*' | cut -d' ' -f2)"+
				" bind=$(cat /data/in)$(cat /etc/one) rand=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'); "+dial)
		if n != 0 {
			for i, ns2 := range spec.Linux.Namespaces {
				if ns2.Type == specs.NetworkNamespace {
					spec.Linux.Namespaces[i].Path = "/run/netns/" + ns
				}
			}
		}
		if tenant != "" {
			if spec.Annotations == nil {
				spec.Annotations = map[string]string{}
			}
			spec.Annotations["io.kubernetes.cri.sandbox-namespace"] = tenant
		}
		// A directory bind and a single-file bind (the files share, as
		// docker's /etc/hosts): each clone sees its own.
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: data, Options: []string{"rbind", "ro"}},
			specs.Mount{Destination: "/etc/one", Type: "bind", Source: filepath.Join(data, "in"), Options: []string{"rbind", "ro"}})
		writeSpec(t, bundle, spec)
		pio, pid := createContainer(t, ctx, r, name, bundle)
		out := make(chan []byte, 1)
		go func() { b, _ := io.ReadAll(pio.Stdout()); out <- b }()
		pio.Stdin().Close()
		if err := r.Start(ctx, name); err != nil {
			t.Fatalf("%s: start: %v (log: %s)", name, err, readFile(r.Log))
		}
		if status := waitPid(t, pid); status != 0 {
			t.Errorf("%s: the container exited %d (log: %s)", name, status, readFile(r.Log))
		}
		stdout := <-out
		if err := r.Delete(ctx, name, &runc.DeleteOpts{Force: true}); err != nil {
			t.Fatalf("%s: delete: %v", name, err)
		}
		checkNothingLeft(t, state)
		m := templateOut.FindStringSubmatch(string(stdout))
		if m == nil {
			t.Fatalf("%s: the container printed %q (log: %s)", name, stdout, readFile(r.Log))
		}
		res := result{btime: m[1], mac: m[2], inet: m[3], inet6: m[4], bind: m[5], rand: m[6]}
		if n != 0 {
			select {
			case res.fromHost = <-got:
			case <-time.After(time.Minute):
			}
		}
		t.Logf("%s: %+v", name, res)
		return res
	}
	vethMAC := func(name string) string {
		t.Helper()
		out, err := exec.Command("ip", "-n", "vessel-tpl-"+name, "-br", "link", "show", "eth0").Output()
		if err != nil {
			t.Fatalf("the MAC of %s's eth0: %v", name, err)
		}
		f := strings.Fields(string(out))
		if len(f) < 3 {
			t.Fatalf("ip -br link: %q", out)
		}
		return f[2]
	}

	check := func(name string, n int, r result) {
		t.Helper()
		if r.inet != fmt.Sprintf("10.%d.0.2/24", n) || r.inet6 != fmt.Sprintf("fd%d::2/64", n) {
			t.Errorf("%s: addresses %s and %s, want 10.%d.0.2/24 and fd%d::2/64", name, r.inet, r.inet6, n, n)
		}
		if r.fromHost != "from-"+name+"\n" {
			t.Errorf("%s: the host end got %q, want %q", name, r.fromHost, "from-"+name+"\n")
		}
		if r.bind != name+name {
			t.Errorf("%s: its binds hold %q, want its own %q twice", name, r.bind, name)
		}
	}
	a := run("a", 81)
	check("a", 81, a)
	if n := templates(); n != 1 {
		t.Fatalf("%d templates after the first create, want 1", n)
	}
	b := run("b", 83)
	check("b", 83, b)
	if n := templates(); n != 1 {
		t.Errorf("%d templates after a create of the same layout, want 1", n)
	}
	if a.btime != b.btime {
		t.Errorf("the second container's kernel booted at %s, the first's at %s: not restored from one template", b.btime, a.btime)
	}
	if a.rand == b.rand {
		t.Errorf("two clones read the same random bytes %s", a.rand)
	}
	if a.mac == b.mac {
		t.Errorf("two clones have the same MAC %s", a.mac)
	}
	for _, c := range []struct {
		name string
		r    result
	}{{"a", a}, {"b", b}} {
		if want := vethMAC(c.name); c.r.mac != want {
			t.Errorf("%s: MAC %s, want its interface's %s", c.name, c.r.mac, want)
		}
	}
	// Another Kubernetes namespace's container of the same layout gets
	// a template of its own: clones share their kernel's boot secrets.
	tenant = "team-b"
	other := run("other", 84)
	tenant = ""
	check("other", 84, other)
	if other.btime == a.btime {
		t.Errorf("another namespace's container came from the first one's template (btime %s)", other.btime)
	}
	if n := templates(); n != 2 {
		t.Errorf("%d templates after a create in another namespace, want 2", n)
	}
	cold := run("cold", 85, "--no-template")
	check("cold", 85, cold)
	if cold.btime == a.btime {
		t.Errorf("the --no-template container's kernel booted at %s, with the template's", cold.btime)
	}
	if n := templates(); n != 2 {
		t.Errorf("%d templates after a --no-template create, want 2", n)
	}
	none := run("none", 0)
	if none.mac != "none" || none.bind != "nonenone" {
		t.Errorf("without a network: MAC %s, binds %q; want none, %q", none.mac, none.bind, "nonenone")
	}
	if n := templates(); n != 3 {
		t.Errorf("%d templates after a create of another layout (no network), want 3", n)
	}
	if none.btime == a.btime {
		t.Errorf("the container without a network came from the networked template (btime %s)", none.btime)
	}
}
