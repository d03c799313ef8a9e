//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
)

// testRuntimeNetnsNew runs a container whose spec asks for a new
// network namespace: the VMM process gets one of its own, and the
// container sees loopback only.
func testRuntimeNetnsNew(t *testing.T, ctx context.Context) {
	r, state := runtimeClient(t)
	// The guest kernel's fallback tunnel devices (sit0) are in every
	// namespace; what counts is that no Ethernet interface is.
	bundle, _ := makeBundle(t, "sh", "-c", "ip -o link show")
	const id = "netns-new"
	pio, pid := createContainer(t, ctx, r, id, bundle)
	var stdout []byte
	done := make(chan struct{})
	go func() { stdout, _ = io.ReadAll(pio.Stdout()); close(done) }()
	go io.Copy(io.Discard, pio.Stderr())
	pio.Stdin().Close()
	self, _ := os.Readlink("/proc/self/ns/net")
	if vmmNS, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err != nil || vmmNS == self {
		t.Errorf("the VMM process's network namespace: %s (%v), want one other than the test's %s", vmmNS, err, self)
	}
	if err := r.Start(ctx, id); err != nil {
		t.Fatalf("start: %v (log: %s)", err, readFile(r.Log))
	}
	if status := waitPid(t, pid); status != 0 {
		t.Errorf("the VMM process exited %d, want 0", status)
	}
	<-done
	if got := string(stdout); !strings.Contains(got, ": lo: ") || strings.Contains(got, "link/ether") {
		t.Errorf("the container's interfaces:\n%s\nwant lo and no Ethernet interface", got)
	}
	if err := r.Delete(ctx, id, nil); err != nil {
		t.Fatalf("delete: %v", err)
	}
	checkNothingLeft(t, state)
}
