package guestdir

import (
	"path/filepath"
	"testing"
)

// TestDir: $VESSEL_GUEST_DIR wins; otherwise the user cache directory's
// vessel/guest.
func TestDir(t *testing.T) {
	t.Setenv("VESSEL_GUEST_DIR", "/some/where")
	if got := Dir(); got != "/some/where" {
		t.Errorf("with VESSEL_GUEST_DIR: %q", got)
	}
	t.Setenv("VESSEL_GUEST_DIR", "")
	t.Setenv("XDG_CACHE_HOME", "/cache")
	if got, want := Dir(), filepath.Join("/cache", "vessel", "guest"); got != want {
		t.Errorf("without: %q, want %q", got, want)
	}
}
