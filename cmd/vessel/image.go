package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/vesselvm/vessel/images/rootfs"
	"github.com/vesselvm/vessel/images/store"
)

// exitImage is the status of a failed `vessel image` command (no such
// image, an unreadable or corrupt archive), as docker's image commands
// use.
const exitImage = 1

func newImage() *cobra.Command {
	img := &cobra.Command{
		Use:   "image",
		Short: "Manage the local image store",
		Long: `Manage vessel's local OCI image store ($XDG_DATA_HOME/vessel/images, by
default ~/.local/share/vessel/images): a content-addressed OCI image
layout, every blob checked against its digest.

An image whose layers hold entries that climb out of its root, or that
expand to more than --max-image-size (8G by default), is refused when it
is loaded or pulled.

Exit statuses: 0 success; 1 no such image, an archive vessel cannot
read or refuses, or a pull that failed; 2 invalid usage.`,
	}
	var input, maxLoad, maxPull string
	load := &cobra.Command{
		Use:   "load [-i] FILE|DIR",
		Short: "Load images from a docker save tarball, an OCI archive or an OCI layout directory",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src := input
			if len(args) == 1 {
				if src != "" {
					return usageErr("give the archive once: -i %s or %s", src, args[0])
				}
				src = args[0]
			}
			if src == "" {
				return usageErr("vessel image load: which archive? (FILE or DIR)")
			}
			return imageLoad(src, maxLoad)
		},
	}
	load.Flags().StringVarP(&input, "input", "i", "", "archive to load (as docker load -i)")
	load.Flags().StringVar(&maxLoad, "max-image-size", defaultMaxImageSize, maxImageSizeUsage)
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List stored images",
		Args:    cobra.NoArgs,
		RunE:    func(*cobra.Command, []string) error { return imageList() },
	}
	rm := &cobra.Command{
		Use:     "rm IMAGE...",
		Aliases: []string{"remove"},
		Short:   "Remove images (a name untags; an ID removes every name) and their unused blobs",
		Args:    cobra.MinimumNArgs(1),
		RunE:    func(_ *cobra.Command, args []string) error { return imageRemove(args) },
	}
	inspect := &cobra.Command{
		Use:   "inspect IMAGE...",
		Short: "Show images' configuration as JSON",
		Args:  cobra.MinimumNArgs(1),
		RunE:  func(_ *cobra.Command, args []string) error { return imageInspect(args) },
	}
	pull := &cobra.Command{
		Use:   "pull REF",
		Short: "Pull an image from a registry (Docker Hub unless REF names another)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return imagePull(cmd.Context(), args[0], maxPull)
		},
	}
	pull.Flags().StringVar(&maxPull, "max-image-size", defaultMaxImageSize, maxImageSizeUsage)
	img.AddCommand(load, pull, ls, rm, inspect)
	return img
}

func openStore() (*store.Store, error) {
	root, err := store.DefaultRoot()
	if err != nil {
		return nil, &exitError{code: exitInternal, msg: err.Error()}
	}
	s, err := store.Open(root)
	if err != nil {
		return nil, &exitError{code: exitInternal, msg: err.Error()}
	}
	return s, nil
}

// defaultMaxImageSize is --max-image-size's default (rootfs.DefaultMaxSize).
const defaultMaxImageSize = "8G"

// maxImageSizeUsage is --max-image-size's help.
const maxImageSizeUsage = "refuse an image whose layers' files add up to more than this, e.g. 8G or 20G (and more than one entry per 8K of it)"

// imageLimits parses --max-image-size.
func imageLimits(size string) (rootfs.Limits, error) {
	n, err := parseSize(size)
	if err != nil || n == 0 || n > math.MaxInt64 {
		return rootfs.Limits{}, fmt.Errorf("--max-image-size %q: want a size such as 8G", size)
	}
	return rootfs.LimitsFor(int64(n)), nil
}

// openStoreLimited opens the store with --max-image-size's limits.
func openStoreLimited(maxSize string) (*store.Store, error) {
	lim, err := imageLimits(maxSize)
	if err != nil {
		return nil, usageErr("%v", err)
	}
	s, err := openStore()
	if err != nil {
		return nil, err
	}
	s.SetLimits(lim)
	return s, nil
}

// imageErrText is err's message, with a hint for an image over the size
// limit.
func imageErrText(err error) string {
	if errors.Is(err, rootfs.ErrTooLarge) {
		return err.Error() + " (--max-image-size raises the limit)"
	}
	return err.Error()
}

// imageErr maps store errors to exit statuses.
func imageErr(err error) error {
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrBadArchive), errors.Is(err, store.ErrAmbiguous), errors.Is(err, os.ErrNotExist),
		errors.Is(err, rootfs.ErrUnsafeEntry), errors.Is(err, rootfs.ErrTooLarge):
		return &exitError{code: exitImage, msg: imageErrText(err)}
	}
	return &exitError{code: exitInternal, msg: err.Error()}
}

func imageLoad(src, maxSize string) error {
	s, err := openStoreLimited(maxSize)
	if err != nil {
		return err
	}
	imgs, err := s.Load(src)
	if err != nil {
		return imageErr(err)
	}
	for _, i := range imgs {
		if i.Ref != "" {
			fmt.Printf("Loaded image: %s\n", familiar(i.Ref))
		} else {
			fmt.Printf("Loaded image ID: %s\n", i.ID)
		}
	}
	return nil
}

func imagePull(ctx context.Context, ref, maxSize string) error {
	s, err := openStoreLimited(maxSize)
	if err != nil {
		return err
	}
	i, err := pullImage(ctx, s, ref)
	if err != nil {
		if errors.Is(err, store.ErrPull) {
			return &exitError{code: exitImage, msg: err.Error()}
		}
		return imageErr(err)
	}
	fmt.Printf("Pulled image: %s\n", familiar(i.Ref))
	return nil
}

// pullImage pulls ref into s, with a progress bar on stderr when that is
// a terminal.
func pullImage(ctx context.Context, s *store.Store, ref string) (store.Image, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		return s.Pull(ctx, ref, nil)
	}
	var bar *progressbar.ProgressBar
	i, err := s.Pull(ctx, ref, func(done, total int64) {
		if bar == nil {
			bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(os.Stderr),
				progressbar.OptionSetDescription("pulling "+ref), progressbar.OptionShowBytes(true),
				progressbar.OptionClearOnFinish(), progressbar.OptionThrottle(100*time.Millisecond))
		}
		bar.Set64(done)
	})
	if bar != nil {
		bar.Finish()
	}
	return i, err
}

// conversionProgress returns a progress display for building an image's
// disk on stderr when that is a terminal (a spinner with the bytes
// converted: the total is not known in advance), or nil; and finish,
// which clears it.
func conversionProgress(ref string) (progress rootfs.Progress, finish func()) {
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		return nil, func() {}
	}
	var bar *progressbar.ProgressBar
	finish = func() {
		if bar != nil {
			bar.Finish()
		}
	}
	return func(done int64) {
		if bar == nil {
			bar = progressbar.NewOptions64(-1, progressbar.OptionSetWriter(os.Stderr),
				progressbar.OptionSetDescription("converting "+ref+" to a disk"), progressbar.OptionShowBytes(true),
				progressbar.OptionClearOnFinish(), progressbar.OptionThrottle(100*time.Millisecond))
		}
		bar.Set64(done)
	}, finish
}

func imageList() error {
	s, err := openStore()
	if err != nil {
		return err
	}
	imgs, err := s.List()
	if err != nil {
		return imageErr(err)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 8, 3, ' ', 0)
	fmt.Fprintln(w, "REPOSITORY\tTAG\tIMAGE ID\tSIZE")
	for _, i := range imgs {
		repo, tag := "<none>", "<none>"
		if r, err := name.ParseReference(i.Ref); err == nil && i.Ref != "" {
			repo, tag = familiar(r.Context().Name()), r.Identifier()
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", repo, tag, i.ShortID(), humanSize(i.Size))
	}
	return w.Flush()
}

func imageRemove(refs []string) error {
	s, err := openStore()
	if err != nil {
		return err
	}
	for _, ref := range refs {
		i, err := s.Remove(ref)
		if err != nil {
			return imageErr(err)
		}
		if i.Ref != "" {
			fmt.Printf("Untagged: %s\n", familiar(i.Ref))
		}
		fmt.Printf("Deleted: %s\n", i.ID)
	}
	return nil
}

// inspected is one image in `vessel image inspect`, shaped like docker's.
type inspected struct {
	ID           string   `json:"Id"`
	RepoTags     []string `json:"RepoTags"`
	Created      string   `json:"Created,omitempty"`
	Architecture string   `json:"Architecture"`
	Os           string   `json:"Os"`
	Size         int64    `json:"Size"`
	Config       any      `json:"Config"`
	RootFS       any      `json:"RootFS"`
}

func imageInspect(refs []string) error {
	s, err := openStore()
	if err != nil {
		return err
	}
	all, err := s.List()
	if err != nil {
		return imageErr(err)
	}
	var out []inspected
	for _, ref := range refs {
		i, err := s.Resolve(ref)
		if err != nil {
			return imageErr(err)
		}
		img, err := s.Image(i)
		if err != nil {
			return imageErr(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return imageErr(err)
		}
		in := inspected{ID: i.ID.String(), RepoTags: []string{}, Architecture: cf.Architecture, Os: cf.OS, Size: i.Size, Config: cf.Config, RootFS: cf.RootFS}
		if !cf.Created.IsZero() {
			in.Created = cf.Created.UTC().Format("2006-01-02T15:04:05Z")
		}
		for _, a := range all {
			if a.ID == i.ID && a.Ref != "" {
				in.RepoTags = append(in.RepoTags, familiar(a.Ref))
			}
		}
		out = append(out, in)
	}
	b, err := json.MarshalIndent(out, "", "    ")
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}

// familiar shortens a Docker Hub reference the way docker prints it.
func familiar(ref string) string {
	ref = strings.TrimPrefix(ref, "index.docker.io/")
	return strings.TrimPrefix(ref, "library/")
}

// humanSize formats bytes as docker does (decimal units).
func humanSize(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.3gGB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.3gMB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.3gkB", float64(n)/1e3)
	}
	return fmt.Sprintf("%dB", n)
}
