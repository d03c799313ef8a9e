package share

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hugelgupf/p9/p9"
	"golang.org/x/sys/unix"
)

// raceRounds is how many entries each case of TestCreateRace makes. The
// code that followed symlinks lost within a few hundred.
const raceRounds = 1000

// TestCreateRace: two shares of one host directory, as two -v of it or
// two VMs sharing it give. While the guest of share a makes entries, a
// second writer of the directory (the other share's guest, or a host
// user) keeps swapping each new name with a decoy: a symlink to a host
// file outside both shares, or a plain file where the guest itself made
// a symlink to that host file. Whatever the interleaving, the host file's
// mode and owner never change.
func TestCreateRace(t *testing.T) {
	for _, tc := range []struct {
		name string
		// decoy makes the entry at path that the racer swaps with the
		// new name.
		decoy func(path, secret string) error
		// create makes name through the share, as the guest asks.
		create func(root p9.File, name, secret string) error
	}{
		{
			name:  "mkdir",
			decoy: func(decoy, secret string) error { return os.Symlink(secret, decoy) },
			create: func(root p9.File, name, _ string) error {
				_, err := root.Mkdir(name, 0o777, 1234, 5678)
				return err
			},
		},
		{
			name:  "mknod",
			decoy: func(decoy, secret string) error { return os.Symlink(secret, decoy) },
			create: func(root p9.File, name, _ string) error {
				_, err := root.Mknod(name, p9.ModeRegular|0o777, 0, 0, 1234, 5678)
				return err
			},
		},
		{
			name:  "symlink",
			decoy: func(decoy, _ string) error { return os.WriteFile(decoy, nil, 0o644) },
			create: func(root p9.File, name, secret string) error {
				_, err := root.Symlink(secret, name, 1234, 5678)
				return err
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, outside := t.TempDir(), t.TempDir()
			secret := filepath.Join(outside, "secret")
			if err := os.WriteFile(secret, []byte("host only"), 0o600); err != nil {
				t.Fatal(err)
			}
			var before unix.Stat_t
			if err := unix.Stat(secret, &before); err != nil {
				t.Fatal(err)
			}
			a, err := New(dir, false, NewFDBudget(1024))
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			// The second share of the directory: the racer works on its
			// descriptor of it. Its guest would swap with a rename, or an
			// unlink and a symlink; 9P has no exchange, which keeps the
			// window one system call wide.
			b, err := New(dir, false, NewFDBudget(1024))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			root, err := a.Attach()
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()

			// Round i: the guest makes "e<i>" while the racer swaps it
			// with the decoy "d<i>" (renameat2 RENAME_EXCHANGE) as fast as
			// it can, from share b's descriptor of the directory.
			decoys, names := make([]string, raceRounds), make([]string, raceRounds)
			for i := range names {
				decoys[i], names[i] = "d"+strconv.Itoa(i), "e"+strconv.Itoa(i)
				if err := tc.decoy(filepath.Join(dir, decoys[i]), secret); err != nil {
					t.Fatal(err)
				}
			}
			var round, racing atomic.Int64
			racing.Store(-1)
			var stop atomic.Bool
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					i := round.Load()
					racing.Store(i)
					unix.Renameat2(b.root, decoys[i], b.root, names[i], unix.RENAME_EXCHANGE)
				}
			}()
			defer func() {
				stop.Store(true)
				wg.Wait()
			}()
			for i := int64(0); i < raceRounds; i++ {
				round.Store(i)
				for racing.Load() != i {
					runtime.Gosched()
				}
				tc.create(root, names[i], secret) // fails when it loses the race
				var st unix.Stat_t
				if err := unix.Stat(secret, &st); err != nil {
					t.Fatal(err)
				}
				if st.Mode != before.Mode || st.Uid != before.Uid || st.Gid != before.Gid {
					t.Fatalf("round %d: the host file outside the share changed from %#o %d:%d to %#o %d:%d",
						i, before.Mode, before.Uid, before.Gid, st.Mode, st.Uid, st.Gid)
				}
			}
		})
	}
}
