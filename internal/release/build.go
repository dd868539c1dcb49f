package release

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// VersionVar is the variable that -ldflags -X sets to the version.
const VersionVar = "github.com/sectun/sectun/internal/version.Version"

// GoEnv is the environment for building t: static (CGO_ENABLED=0), the
// target's GOOS/GOARCH/GOARM, baseline instruction sets, and GOFLAGS
// cleared so the machine's settings do not change the bytes.
func GoEnv(base []string, t Target) []string {
	env := make([]string, 0, len(base)+8)
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "CGO_ENABLED", "GOOS", "GOARCH", "GOARM", "GOAMD64", "GOARM64", "GOFLAGS", "GOEXPERIMENT":
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "CGO_ENABLED=0", "GOOS="+t.GOOS, "GOARCH="+t.GOARCH, "GOFLAGS=", "GOAMD64=v1", "GOARM64=v8.0")
	if t.GOARM != "" {
		env = append(env, "GOARM="+t.GOARM)
	}
	return env
}

// BuildArgs are the go build arguments of a release binary.
func BuildArgs(version string) []string {
	return []string{"build", "-trimpath", "-buildvcs=false",
		"-ldflags=-s -w -buildid= -X " + VersionVar + "=" + version}
}

// Build builds the four binaries for t into dir.
func Build(ctx context.Context, cfg Config, t Target, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	args := append(BuildArgs(cfg.Version), "-o", dir+string(os.PathSeparator))
	for _, b := range Binaries {
		args = append(args, "./cmd/"+b)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = cfg.Root
	cmd.Env = GoEnv(cfg.Env, t)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: build %s: %v\n%s", ErrRelease, t.Name(), err, out.String())
	}
	return nil
}
