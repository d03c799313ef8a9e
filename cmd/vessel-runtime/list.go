package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"sort"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go/features"
	"github.com/spf13/cobra"
)

// checkFormat checks a --format flag.
func checkFormat(f string) error {
	if f != "table" && f != "json" {
		return errorf("invalid format option %q: want table or json", f)
	}
	return nil
}

func newPs(g *globals) *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "ps [--format table|json] ID",
		Short: "list the host process that runs the container (its VM's); exec ID ps lists those in the VM",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errorf("want the container ID")
			}
			if len(args) > 1 {
				return errorf("ps options are not supported by vessel-runtime: the processes are in a VM")
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			dir, rec, err := g.load(args[0])
			if err != nil {
				return err
			}
			if st := rec.status(dir); st != statusCreated && st != statusRunning {
				return errorf("container %s is not running", rec.ID)
			}
			// The host process that stands for the container, not the
			// guest's PIDs: callers match these against the host's
			// processes (docker top runs the host's ps and keeps these
			// PIDs' lines), and the guest's numbers, chosen by the
			// guest, would name unrelated host processes. Kata's shim
			// answers with its hypervisor's PID the same way. The
			// processes in the VM: exec ID ps.
			return writePs(c.OutOrStdout(), format, []int{rec.Pid})
		},
	}
	c.Flags().StringVarP(&format, "format", "f", "table", "table or json (a JSON array of PIDs)")
	return c
}

// writePs prints the PIDs: runc's JSON array of ints, or a table.
func writePs(w io.Writer, format string, pids []int) error {
	if format == "json" {
		b, _ := json.Marshal(pids)
		_, err := fmt.Fprintf(w, "%s\n", b)
		return err
	}
	fmt.Fprintln(w, "PID")
	for _, p := range pids {
		fmt.Fprintln(w, p)
	}
	return nil
}

// listEntry is runc's list's JSON of one container.
type listEntry struct {
	OCIVersion  string            `json:"ociVersion"`
	ID          string            `json:"id"`
	Pid         int               `json:"pid"`
	Status      string            `json:"status"`
	Bundle      string            `json:"bundle"`
	Rootfs      string            `json:"rootfs"`
	Created     time.Time         `json:"created"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Owner       string            `json:"owner"`
}

func newList(g *globals) *cobra.Command {
	var format string
	var quiet bool
	c := &cobra.Command{
		Use:   "list [--format table|json] [-q]",
		Short: "list the containers",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 0 {
				return errorf("list takes no arguments (got %d)", len(args))
			}
			return nil
		},
		RunE: func(c *cobra.Command, _ []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			entries, err := g.list()
			if err != nil {
				return err
			}
			return writeList(c.OutOrStdout(), format, quiet, entries)
		},
	}
	c.Flags().StringVarP(&format, "format", "f", "table", "table or json")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print the IDs only")
	return c
}

// list reads every container's state, in ID order.
func (g *globals) list() ([]listEntry, error) {
	ents, err := os.ReadDir(g.root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, errorf("list: %v", err)
	}
	var out []listEntry
	for _, e := range ents {
		if !e.IsDir() || !validID(e.Name()) {
			continue
		}
		dir, rec, err := g.load(e.Name())
		if err != nil {
			continue // removed meanwhile, or not a container's
		}
		st := rec.status(dir)
		le := listEntry{OCIVersion: ociVersion, ID: rec.ID, Status: st, Bundle: rec.Bundle,
			Created: rec.Created, Annotations: rec.Annotations, Owner: owner(dir)}
		if st != statusStopped {
			le.Pid = rec.Pid
		}
		if b, err := loadBundle(rec.Bundle); err == nil {
			le.Rootfs = b.rootfs
		}
		out = append(out, le)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// owner is the name of the state directory's owner (its UID if it has
// none), as runc's.
func owner(dir string) string {
	fi, err := os.Stat(dir)
	if err != nil {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	uid := strconv.FormatUint(uint64(st.Uid), 10)
	if u, err := user.LookupId(uid); err == nil {
		return u.Username
	}
	return "#" + uid
}

// writeList prints the containers as runc's list: IDs only, a JSON
// array (null for none, as runc's), or runc's table.
func writeList(w io.Writer, format string, quiet bool, entries []listEntry) error {
	if quiet {
		for _, e := range entries {
			fmt.Fprintln(w, e.ID)
		}
		return nil
	}
	if format == "json" {
		b, err := json.Marshal(entries)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	tw := tabwriter.NewWriter(w, 12, 1, 3, ' ', 0)
	fmt.Fprint(tw, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER\n")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", e.ID, e.Pid, e.Status, e.Bundle, e.Created.Format(time.RFC3339Nano), e.Owner)
	}
	return tw.Flush()
}

// vesselFeatures is what vessel-runtime supports, as runtime-spec's
// features document: the guest's runc (static, with libseccomp) on
// vessel's guest kernel (cgroup v2; no time namespace; no AppArmor or
// SELinux), behind what vessel-runtime refuses (createContainer and
// startContainer hooks, joining namespaces by path but the network's
// and a pod sandbox's).
func vesselFeatures() features.Features {
	yes, no := true, false
	return features.Features{
		OCIVersionMin: "1.0.0",
		OCIVersionMax: ociVersion,
		Hooks:         []string{"prestart", "createRuntime", "poststart", "poststop"},
		MountOptions: []string{"async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
			"iversion", "lazytime", "loud", "mand", "noatime", "nodev", "nodiratime", "noexec", "noiversion",
			"nolazytime", "nomand", "norelatime", "nostrictatime", "nosuid", "private", "rbind", "relatime",
			"remount", "ro", "rprivate", "rshared", "rslave", "runbindable", "rw", "shared", "silent", "slave",
			"strictatime", "sync", "unbindable"},
		Linux: &features.Linux{
			Namespaces: []string{"cgroup", "ipc", "mount", "network", "pid", "user", "uts"},
			Capabilities: []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
				"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
				"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
				"CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
				"CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
				"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
				"CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"},
			Cgroup:          &features.Cgroup{V1: &no, V2: &yes, Systemd: &no, SystemdUser: &no, Rdma: &no},
			Seccomp:         &features.Seccomp{Enabled: &yes},
			Apparmor:        &features.Apparmor{Enabled: &no},
			Selinux:         &features.Selinux{Enabled: &no},
			IntelRdt:        &features.IntelRdt{Enabled: &no},
			MountExtensions: &features.MountExtensions{IDMap: &features.IDMap{Enabled: &no}},
			NetDevices:      &features.NetDevices{Enabled: &no},
		},
		Annotations: map[string]string{"io.github.vesselvm.vessel.version": gitVersion},
	}
}

func newFeatures() *cobra.Command {
	return &cobra.Command{
		Use:   "features",
		Short: "print what vessel-runtime supports, as runtime-spec's features JSON",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			b, err := json.MarshalIndent(vesselFeatures(), "", "    ")
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "%s\n", b)
			return nil
		},
	}
}

// newUnsupported is a runc command vessel-runtime does not do: it takes
// any of runc's flags and fails with one line.
func newUnsupported(name, short string) *cobra.Command {
	return &cobra.Command{
		Use:   name + " [flags] ID",
		Short: short + " (not supported: exits 1)",
		// runc's flags (and their values) are taken and ignored; the
		// global ones still count (--log).
		FParseErrWhitelist: cobra.FParseErrWhitelist{UnknownFlags: true},
		RunE: func(*cobra.Command, []string) error {
			return errorf("%s is not supported by vessel-runtime", name)
		},
	}
}
