// Command release builds sectun's release artifacts into ./dist: run
// `go run ./release` at the repository root (`--help` for the options).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/spf13/pflag"

	"github.com/sectun/sectun/internal/release"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil && !errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintln(os.Stderr, err) // errors start with "release:"
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	var cfg release.Config
	fs := pflag.NewFlagSet("release", pflag.ContinueOnError)
	fs.StringVar(&cfg.Root, "root", ".", "repository root")
	fs.StringVar(&cfg.Out, "out", "dist", "output directory (emptied first)")
	fs.StringVar(&cfg.Version, "version", "", "version to link in (default: the git tag on HEAD, else devel-<commit>)")
	targets := fs.StringSlice("target", nil, "targets to build, e.g. linux/amd64,linux/armv6 (default: all)")
	fs.BoolVar(&cfg.NoPackages, "no-packages", false, "skip the .deb and .rpm packages")
	fs.BoolVar(&cfg.NoImage, "no-image", false, "skip the OCI image")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, s := range *targets {
		t, err := release.ParseTarget(s)
		if err != nil {
			return err
		}
		cfg.Targets = append(cfg.Targets, t)
	}
	cfg.Log = os.Stderr
	start := time.Now()
	res, err := release.Run(ctx, cfg)
	if err != nil {
		return err
	}
	for _, a := range res.Artifacts {
		fmt.Println(cfg.Out + "/" + a)
	}
	fmt.Fprintf(os.Stderr, "release %s: %d artifacts in %.1fs\n", res.Version, len(res.Artifacts), time.Since(start).Seconds())
	return nil
}
