package main

import (
	"fmt"
	"io"
	"log"
	"os"
	"strings"

	"github.com/vesselvm/vessel/guest/cmdline"
	"github.com/vesselvm/vessel/guest/netconf"
)

// configureNet sets up the interfaces the host listed, one after another
// (netconf.ConfigureLink): static addresses, routes and name servers, or
// DHCP. A failure is one line on stderr; the command runs anyway.
func configureNet(nets []cmdline.Net) {
	if len(nets) == 0 {
		return
	}
	// u-root's DHCP client logs every step through the standard logger;
	// the console is the command's output.
	log.SetOutput(io.Discard)
	ensureHosts()
	for _, n := range nets {
		if err := netconf.ConfigureLink(n); err != nil {
			fmt.Fprintf(os.Stderr, "vesselinit: net %s: %v\n", n.MAC, err)
		}
	}
}

// ensureHosts makes sure /etc/hosts names localhost.
func ensureHosts() {
	const path = "/etc/hosts"
	b, err := os.ReadFile(path)
	if err == nil && strings.Contains(string(b), "localhost") {
		return
	}
	os.WriteFile(path, append(b, "127.0.0.1 localhost\n::1 localhost\n"...), 0o644)
}
