// Package cmdline carries what the host asks the guest init to do across
// the kernel command line: the command to run, how the console behaves and
// which network interfaces to configure. The host encodes, the guest init
// (guest/vesselinit) decodes.
//
// The command travels as one parameter, vessel.cmd=<base64url of a JSON
// string array>, so arguments with spaces, quotes or '=' survive the
// kernel's own parameter splitting unchanged; the network settings the
// same way, as vessel.net=<base64url of a JSON array of Net>. Both use
// the URL alphabet without padding (base64.RawURLEncoding). The kernel
// passes unknown parameters with a dot to nobody, and the init reads
// /proc/cmdline.
package cmdline

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Parameter names.
const (
	// ParamCmd holds the encoded argv.
	ParamCmd = "vessel.cmd"
	// ParamTTY is 1 when the host console is a terminal (interactive use)
	// and 0 when output is captured, in which case the init turns off the
	// console's output processing so the host gets the bytes as written.
	ParamTTY = "vessel.tty"
	// ParamControl is 1 when the VMM is vessel and has its control port
	// (boot marker, exit status). Only then does the init touch the port:
	// other VMMs (booting the same initramfs for a comparison) may treat
	// an unknown I/O port as fatal.
	ParamControl = "vessel.ctl"
	// ParamNet holds the network interfaces to configure: base64url of
	// a JSON array of Net.
	ParamNet = "vessel.net"
)

// ErrBadCmd is returned when vessel.cmd cannot be decoded.
var ErrBadCmd = errors.New("cmdline: malformed vessel.cmd")

// ErrBadNet is returned when vessel.net cannot be decoded or holds an
// invalid setting.
var ErrBadNet = errors.New("cmdline: malformed vessel.net")

// Net is one network interface the guest init configures. An interface
// with neither Addr nor Addrs and without Static gets its address by
// DHCP; the other fields other than MAC and MTU are for static ones.
type Net struct {
	MAC     string   `json:"mac"`              // which interface, by hardware address (lower-case, colon form)
	Addr    string   `json:"addr,omitempty"`   // static address in CIDR form (10.0.0.2/24)
	Addrs   []string `json:"addrs,omitempty"`  // further static addresses in CIDR form, IPv4 or IPv6
	Static  bool     `json:"static,omitempty"` // no DHCP, even without an address
	Gateway string   `json:"gw,omitempty"`     // default route
	Routes  []Route  `json:"routes,omitempty"` // further routes through this interface
	DNS     []string `json:"dns,omitempty"`    // name servers (DHCP brings its own)
	MTU     int      `json:"mtu,omitempty"`    // 0: leave the driver's
}

// Route is a route through an interface: to Dst (a prefix in CIDR form;
// 0.0.0.0/0 or ::/0 for a default route) via Gateway, or directly on
// the link when Gateway is empty.
type Route struct {
	Dst     string `json:"dst"`
	Gateway string `json:"gw,omitempty"`
}

// Bounds of a Net: the kernel command line is short (2 KiB on x86), so
// these are far more than fits; they only cap what Decode accepts.
const (
	MaxAddrs  = 32
	MaxRoutes = 64
)

// DHCP reports whether the interface gets its address by DHCP.
func (n Net) DHCP() bool {
	return n.Addr == "" && len(n.Addrs) == 0 && !n.Static
}

// Validate checks every field: MAC as net.ParseMAC reads it, Addr and
// Addrs as prefixes (netip.ParsePrefix), Gateway and DNS as addresses
// (netip.ParseAddr), each route's Dst as a prefix and its Gateway as an
// address of the same family, at most MaxAddrs further addresses and
// MaxRoutes routes, MTU 0 or 68..65535. Errors wrap ErrBadNet.
func (n Net) Validate() error {
	if _, err := net.ParseMAC(n.MAC); err != nil {
		return fmt.Errorf("%w: mac %q", ErrBadNet, n.MAC)
	}
	if n.Addr != "" {
		if _, err := netip.ParsePrefix(n.Addr); err != nil {
			return fmt.Errorf("%w: addr %q", ErrBadNet, n.Addr)
		}
	}
	if len(n.Addrs) > MaxAddrs {
		return fmt.Errorf("%w: %d addresses, at most %d", ErrBadNet, len(n.Addrs), MaxAddrs)
	}
	for _, a := range n.Addrs {
		if _, err := netip.ParsePrefix(a); err != nil {
			return fmt.Errorf("%w: addrs %q", ErrBadNet, a)
		}
	}
	if n.Gateway != "" {
		if _, err := netip.ParseAddr(n.Gateway); err != nil {
			return fmt.Errorf("%w: gw %q", ErrBadNet, n.Gateway)
		}
	}
	if len(n.Routes) > MaxRoutes {
		return fmt.Errorf("%w: %d routes, at most %d", ErrBadNet, len(n.Routes), MaxRoutes)
	}
	for _, r := range n.Routes {
		dst, err := netip.ParsePrefix(r.Dst)
		if err != nil {
			return fmt.Errorf("%w: route dst %q", ErrBadNet, r.Dst)
		}
		if r.Gateway != "" {
			gw, err := netip.ParseAddr(r.Gateway)
			if err != nil || gw.Is4() != dst.Addr().Is4() {
				return fmt.Errorf("%w: route to %s: gw %q", ErrBadNet, r.Dst, r.Gateway)
			}
		}
	}
	for _, d := range n.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			return fmt.Errorf("%w: dns %q", ErrBadNet, d)
		}
	}
	if n.MTU != 0 && (n.MTU < 68 || n.MTU > 65535) {
		return fmt.Errorf("%w: mtu %d", ErrBadNet, n.MTU)
	}
	return nil
}

// Spec is what the init is asked to do.
type Spec struct {
	Argv    []string // the command; empty means an interactive shell
	TTY     bool
	Control bool  // the VMM has vessel's control port
	Net     []Net // interfaces to configure, in this order; empty: none
}

// Encode returns the kernel parameters for s, to append to a command line.
// It leaves out vessel.cmd when Argv is empty and vessel.net when Net is,
// and refuses an invalid Net with an error wrapping ErrBadNet.
func Encode(s Spec) (string, error) {
	var parts []string
	if len(s.Argv) > 0 {
		j, err := json.Marshal(s.Argv)
		if err != nil {
			return "", fmt.Errorf("cmdline: encode command: %w", err)
		}
		parts = append(parts, ParamCmd+"="+base64.RawURLEncoding.EncodeToString(j))
	}
	tty := "0"
	if s.TTY {
		tty = "1"
	}
	parts = append(parts, ParamTTY+"="+tty)
	if s.Control {
		parts = append(parts, ParamControl+"=1")
	}
	if len(s.Net) > 0 {
		for _, n := range s.Net {
			if err := n.Validate(); err != nil {
				return "", err
			}
		}
		j, err := json.Marshal(s.Net)
		if err != nil {
			return "", fmt.Errorf("cmdline: encode network: %w", err)
		}
		parts = append(parts, ParamNet+"="+base64.RawURLEncoding.EncodeToString(j))
	}
	return strings.Join(parts, " "), nil
}

// Decode reads a Spec from the text of /proc/cmdline. The last occurrence
// of a parameter wins, as with the kernel's own parameters. A vessel.cmd
// that does not decode is an error wrapping ErrBadCmd; a vessel.net that
// does not decode or holds an invalid Net (see Net.Validate), one wrapping
// ErrBadNet. Empty lists decode as nil, as Encode leaves them out.
func Decode(procCmdline string) (Spec, error) {
	var s Spec
	for _, f := range strings.Fields(procCmdline) {
		k, val, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		switch k {
		case ParamCmd:
			raw, err := base64.RawURLEncoding.DecodeString(val)
			if err != nil {
				return Spec{}, fmt.Errorf("%w: %w", ErrBadCmd, err)
			}
			var argv []string
			if err := json.Unmarshal(raw, &argv); err != nil {
				return Spec{}, fmt.Errorf("%w: %w", ErrBadCmd, err)
			}
			s.Argv = nil // "[]" and "null" alike: no command
			if len(argv) > 0 {
				s.Argv = argv
			}
		case ParamTTY:
			s.TTY = val == "1"
		case ParamControl:
			s.Control = val == "1"
		case ParamNet:
			raw, err := base64.RawURLEncoding.DecodeString(val)
			if err != nil {
				return Spec{}, fmt.Errorf("%w: %w", ErrBadNet, err)
			}
			var nets []Net
			if err := json.Unmarshal(raw, &nets); err != nil {
				return Spec{}, fmt.Errorf("%w: %w", ErrBadNet, err)
			}
			for i := range nets {
				if err := nets[i].Validate(); err != nil {
					return Spec{}, err
				}
				// as Encode leaves them out
				if len(nets[i].DNS) == 0 {
					nets[i].DNS = nil
				}
				if len(nets[i].Addrs) == 0 {
					nets[i].Addrs = nil
				}
				if len(nets[i].Routes) == 0 {
					nets[i].Routes = nil
				}
			}
			s.Net = nil
			if len(nets) > 0 {
				s.Net = nets
			}
		}
	}
	return s, nil
}
