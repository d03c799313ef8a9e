package main

import (
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vishvananda/netlink"

	"github.com/vesselvm/vessel/guest/agentproto"
	"github.com/vesselvm/vessel/guest/cmdline"
	"github.com/vesselvm/vessel/vmm"
)

// TestShareTags: a template's share layout is the one vmmProc.create
// attaches (rootfs, pod, files, then each directory bind) and depends on
// the kinds and order of the binds, not on their paths.
func TestShareTags(t *testing.T) {
	host, other := t.TempDir(), t.TempDir()
	file := filepath.Join(host, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	bindOf := func(src, dst string) specs.Mount {
		return specs.Mount{Destination: dst, Type: "bind", Source: src, Options: []string{"rbind"}}
	}
	for _, tc := range []struct {
		name    string
		mounts  []specs.Mount
		sandbox bool
		want    []string
	}{
		{"rootfs only", nil, false, []string{rootTag}},
		{"a pod's sandbox", nil, true, []string{rootTag, podTag}},
		{"a file bind", []specs.Mount{bindOf(file, "/etc/hosts")}, false, []string{rootTag, filesTag}},
		{"binds of both kinds", []specs.Mount{bindOf(host, "/a"), bindOf(file, "/etc/hosts"), bindOf(other, "/b")}, false,
			[]string{rootTag, filesTag, "vessel-bind-0", "vessel-bind-1"}},
		{"the same kinds elsewhere", []specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}, bindOf(other, "/x"), bindOf(file, "/etc/resolv.conf"), bindOf(host, "/y")}, false,
			[]string{rootTag, filesTag, "vessel-bind-0", "vessel-bind-1"}},
	} {
		dir := testBundle(t, func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, tc.mounts...)
			if tc.sandbox {
				s.Annotations = map[string]string{annotationContainerType: containerTypeSandbox}
			}
		})
		b, err := loadBundle(dir)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := shareTags(b); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: tags %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestRuntimeTemplateKey: every input a clone depends on changes the
// key, and the same inputs give the same key.
func TestRuntimeTemplateKey(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "bzImage"), filepath.Join(dir, "initramfs.cpio")
	for _, p := range []string{kernel, initrd} {
		if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	base := runtimeTemplate{Kernel: kernel, Initrd: initrd, CPUs: 1, Memory: 512 << 20, Nets: 1, Tags: []string{rootTag, filesTag}}
	key := func(tpl runtimeTemplate) string {
		k, err := tpl.key()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k0 := key(base)
	if key(base) != k0 {
		t.Fatal("the same template gave two keys")
	}
	seen := map[string]string{k0: "base"}
	for name, edit := range map[string]func(*runtimeTemplate){
		"cpus":       func(t *runtimeTemplate) { t.CPUs = 2 },
		"memory":     func(t *runtimeTemplate) { t.Memory = 672 << 20 },
		"nets":       func(t *runtimeTemplate) { t.Nets = 0 },
		"tags":       func(t *runtimeTemplate) { t.Tags = []string{rootTag} },
		"tag order":  func(t *runtimeTemplate) { t.Tags = []string{filesTag, rootTag} },
		"another fs": func(t *runtimeTemplate) { t.Initrd = kernel },
		"tenant":     func(t *runtimeTemplate) { t.Tenant = "team-a" },
	} {
		tpl := base
		edit(&tpl)
		k := key(tpl)
		if prev, dup := seen[k]; dup {
			t.Errorf("%s: the same key as %s", name, prev)
		}
		seen[k] = name
	}
	if err := os.WriteFile(initrd, []byte("a rebuilt initramfs"), 0o644); err != nil {
		t.Fatal(err)
	}
	if key(base) == k0 {
		t.Error("a rebuilt initramfs kept the key")
	}
}

// TestTenantOf: a pod's Kubernetes namespace, as containerd's CRI plugin
// or CRI-O annotates it, makes its tenant; a pod that names another
// namespace in the other runtime's annotation beside its own (a CRI-O
// pod's own annotations are passed on) gets a tenant of its own, not
// that namespace's.
func TestTenantOf(t *testing.T) {
	const containerd, crio, label = "io.kubernetes.cri.sandbox-namespace", "io.kubernetes.cri-o.Namespace", "io.kubernetes.pod.namespace"
	tenant := func(ann map[string]string) string { return tenantOf(&specs.Spec{Annotations: ann}) }
	if got := tenant(nil); got != "" {
		t.Errorf("docker: tenant %q, want none", got)
	}
	if got := tenant(map[string]string{containerd: ""}); got != "" {
		t.Errorf("an empty namespace: tenant %q, want none", got)
	}
	teamA := tenant(map[string]string{containerd: "team-a", annotationContainerType: containerTypeSandbox})
	crioA := tenant(map[string]string{crio: "team-a", label: "team-a"})
	seen := map[string]string{"": "docker", teamA: "containerd team-a", crioA: "CRI-O team-a"}
	for name, ann := range map[string]map[string]string{
		"containerd team-b": {containerd: "team-b"},
		"CRI-O team-b":      {crio: "team-b", label: "team-b"},
		"CRI-O team-b naming team-a (containerd)": {crio: "team-b", label: "team-b", containerd: "team-a"},
		"CRI-O team-b naming team-a (label)":      {crio: "team-b", label: "team-a"},
	} {
		got := tenant(ann)
		if prev, dup := seen[got]; dup {
			t.Errorf("%s: the tenant of %s (%q)", name, prev, got)
		}
		seen[got] = name
	}
	if tenant(map[string]string{containerd: "team-a"}) != teamA {
		t.Error("one namespace gave two tenants")
	}
}

// TestTemplateFits: a template is used only for a VM of its size,
// interfaces and shares.
func TestTemplateFits(t *testing.T) {
	info := vmm.SnapshotInfo{CPUs: 1, Memory: 512 << 20, Nets: []vmm.Net{{}}, Shares: []vmm.Share{{Tag: rootTag}, {Tag: filesTag}}}
	cfg := vmm.Config{CPUs: 1, Memory: 512 << 20, Nets: []vmm.Net{{Tap: "vtap0"}}, Shares: []vmm.Share{{Tag: rootTag, Dir: "/r"}, {Tag: filesTag, Dir: "/f"}}}
	if err := templateFits(info, cfg); err != nil {
		t.Fatalf("a fitting template: %v", err)
	}
	for name, edit := range map[string]func(*vmm.Config){
		"cpus":        func(c *vmm.Config) { c.CPUs = 2 },
		"memory":      func(c *vmm.Config) { c.Memory = 256 << 20 },
		"no network":  func(c *vmm.Config) { c.Nets = nil },
		"a share":     func(c *vmm.Config) { c.Shares = c.Shares[:1] },
		"another tag": func(c *vmm.Config) { c.Shares = []vmm.Share{{Tag: rootTag}, {Tag: podTag}} },
	} {
		c := cfg
		edit(&c)
		if err := templateFits(info, c); err == nil {
			t.Errorf("%s: a template of another VM fits", name)
		}
	}
}

// TestCloneNet: each interface moves from its template MAC to its own,
// and is configured by its own address, which the agent checks
// (agentproto's CheckNet and vesselagent's planNet).
func TestCloneNet(t *testing.T) {
	var ifs []*ifaceLink
	for i, mac := range []string{"02:42:ac:11:00:02", "0a:58:0a:f4:00:07"} {
		hw, _ := net.ParseMAC(mac)
		l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth" + string(rune('0'+i)), HardwareAddr: hw}}
		ifs = append(ifs, &ifaceLink{link: l, guest: cmdline.Net{MAC: mac, Static: true, Addr: "10.0.0.2/24"}})
	}
	macs, nets := cloneNet(ifs)
	want := []agentproto.MACChange{{From: "02:76:73:6c:74:00", To: "02:42:ac:11:00:02"}, {From: "02:76:73:6c:74:01", To: "0a:58:0a:f4:00:07"}}
	if !reflect.DeepEqual(macs, want) {
		t.Errorf("MAC changes %+v, want %+v", macs, want)
	}
	for i, n := range nets {
		if n.MAC != macs[i].To {
			t.Errorf("net %d names %s, its MAC change gives %s", i, n.MAC, macs[i].To)
		}
	}
	if m := templateNetMAC(0); m[0]&0x02 == 0 || m[0]&0x01 != 0 || !strings.HasPrefix(m.String(), "02:") {
		t.Errorf("template MAC %s: want a locally administered unicast address", m)
	}
}
