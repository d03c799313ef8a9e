// Package container is the host side of running OCI containers in a
// vessel microVM: the OCI runtime configuration made from an image's
// config and docker run's flags (this file), and the client of the guest
// agent's protocol (agent.go).
package container

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ErrNoCommand is returned when neither the image nor the flags name a
// command to run.
var ErrNoCommand = errors.New("no command specified")

// DefaultPath is the PATH docker gives a container whose image sets none.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Options are docker run's flags that shape the container's process.
type Options struct {
	// Args replaces the image's Cmd when not empty.
	Args []string
	// Entrypoint, if not nil, replaces the image's Entrypoint (an empty
	// string clears it), and then the image's Cmd is not used either.
	Entrypoint *string
	// Env holds -e values: KEY=VALUE sets, a bare KEY copies the host's
	// value (and is dropped when the host has none).
	Env []string
	// Workdir replaces the image's WorkingDir.
	Workdir string
	// User replaces the image's User: user[:group], names or numbers,
	// resolved in the guest against the image's /etc/passwd.
	User string
	// Terminal gives the process a terminal (-t) of ConsoleSize.
	Terminal    bool
	ConsoleSize *specs.Box
	// Hostname is the container's host name.
	Hostname string
	// PidsLimit, if positive, caps the container's processes (the pids
	// cgroup, docker's --pids-limit).
	PidsLimit int64
}

// Spec returns the OCI runtime configuration for an image with config
// cfg and the flags o, applying them as docker does (see docker run's
// reference, "Default command and options", "ENTRYPOINT", "ENV",
// "WORKDIR", "USER"), plus the user string the agent resolves.
//
// The container gets its own PID, mount, IPC, UTS and cgroup namespaces
// but shares the VM's network namespace: the VM, with its own kernel, is
// the sandbox, and its network is the container's (as in Kata
// Containers). Mounts, capabilities, masked paths and the seccomp
// profile follow docker's defaults (moby's oci/defaults.go and
// moby/profiles' default profile): the VM is the boundary, and the guest
// keeps the container as docker would, a defense layer of its own in
// front of the guest kernel.
func Spec(cfg v1.Config, o Options) (*specs.Spec, string, error) {
	var argv []string
	switch {
	case o.Entrypoint != nil:
		if *o.Entrypoint != "" {
			argv = []string{*o.Entrypoint}
		}
		argv = append(argv, o.Args...)
	case len(o.Args) > 0:
		argv = append(append(argv, cfg.Entrypoint...), o.Args...)
	default:
		argv = append(append(argv, cfg.Entrypoint...), cfg.Cmd...)
	}
	if len(argv) == 0 {
		return nil, "", ErrNoCommand
	}
	env, err := mergeEnv(cfg.Env, o.Env, o.Hostname, o.Terminal)
	if err != nil {
		return nil, "", err
	}
	cwd := "/"
	if cfg.WorkingDir != "" {
		cwd = cfg.WorkingDir
	}
	if o.Workdir != "" {
		cwd = o.Workdir
	}
	if !strings.HasPrefix(cwd, "/") {
		return nil, "", fmt.Errorf("the working directory %q is not an absolute path", cwd)
	}
	user := cfg.User
	if o.User != "" {
		user = o.User
	}
	caps := defaultCaps()
	s := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Terminal:    o.Terminal,
			ConsoleSize: o.ConsoleSize,
			Args:        argv,
			Env:         env,
			Cwd:         cwd,
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1048576, Soft: 1048576}},
			// Not the agent's -999: under memory pressure the OOM
			// killer picks the container's processes, as docker's 0.
			OOMScoreAdj: new(int),
		},
		Hostname: o.Hostname,
		Mounts:   defaultMounts(),
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.CgroupNamespace},
			},
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			MaskedPaths: []string{
				"/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
				"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
				"/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}
	if o.PidsLimit > 0 {
		limit := o.PidsLimit
		s.Linux.Resources.Pids = &specs.LinuxPids{Limit: &limit}
	}
	// The profile's conditional rules follow the capabilities above.
	if s.Linux.Seccomp, err = seccomp.GetDefaultProfile(s); err != nil {
		return nil, "", fmt.Errorf("docker's default seccomp profile: %w", err)
	}
	return s, user, nil
}

// mergeEnv applies docker's environment rules: the image's variables,
// then -e ones replacing same-named ones; PATH defaults to DefaultPath,
// HOSTNAME is the container's and TERM is xterm with a terminal (both
// unless set).
func mergeEnv(image, flags []string, hostname string, terminal bool) ([]string, error) {
	flags, err := ExpandEnv(flags)
	if err != nil {
		return nil, err
	}
	for _, kv := range image {
		// The guest's runc refuses such an entry when the container
		// starts: say which, and before the VM boots.
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" || strings.ContainsRune(kv, 0) {
			return nil, fmt.Errorf("the image's environment entry %q is not KEY=VALUE", kv)
		}
	}
	env := OverrideEnv(OverrideEnv(nil, image), flags)
	defaults := []string{DefaultPath}
	if hostname != "" {
		defaults = append(defaults, "HOSTNAME="+hostname)
	}
	if terminal {
		defaults = append(defaults, "TERM=xterm")
	}
	for _, kv := range defaults {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, k+"=") }) {
			env = append(env, kv)
		}
	}
	return env, nil
}

// OverrideEnv returns base with each KEY=VALUE of kvs set: replacing the
// same key's entry in place, or appended.
func OverrideEnv(base, kvs []string) []string {
	env := append([]string(nil), base...)
	index := map[string]int{}
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		index[k] = i
	}
	for _, kv := range kvs {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := index[k]; ok {
			env[i] = kv
			continue
		}
		index[k] = len(env)
		env = append(env, kv)
	}
	return env
}

// ExpandEnv checks docker's -e values and resolves them to KEY=VALUE: a
// bare KEY takes the host's value, and is dropped when the host has none.
func ExpandEnv(flags []string) ([]string, error) {
	var env []string
	for _, kv := range flags {
		k, _, hasValue := strings.Cut(kv, "=")
		if k == "" {
			return nil, fmt.Errorf("invalid environment variable %q", kv)
		}
		if !hasValue {
			v, ok := os.LookupEnv(k)
			if !ok {
				continue
			}
			kv = k + "=" + v
		}
		env = append(env, kv)
	}
	return env, nil
}

// defaultCaps are the capabilities docker grants by default.
func defaultCaps() []string {
	return []string{
		"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
		"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
		"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
	}
}

// defaultMounts are docker's default mounts.
func defaultMounts() []specs.Mount {
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro", "nosuid", "noexec", "nodev"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=67108864"}},
	}
}
