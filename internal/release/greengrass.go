package release

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// GreengrassRecipe is deploy/greengrass's recipe template.
const GreengrassRecipe = "deploy/greengrass/com.sectun.TunnelAgent.json"

// ComponentVersion is the Greengrass component version (major.minor.patch)
// of a release version: v1.2.3 is 1.2.3, a devel build 0.0.0.
func ComponentVersion(v string) string {
	if len(v) > 1 && v[0] == 'v' && v[1] >= '0' && v[1] <= '9' {
		return v[1:]
	}
	return "0.0.0"
}

// RenderRecipe fills the template's {{VERSION}} and {{COMPONENT_VERSION}};
// {{ARTIFACT_BASE}}, where the archives are uploaded, is the publisher's.
func RenderRecipe(tmpl []byte, version string) ([]byte, error) {
	s := strings.NewReplacer("{{VERSION}}", version, "{{COMPONENT_VERSION}}", ComponentVersion(version)).Replace(string(tmpl))
	var v map[string]any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return nil, fmt.Errorf("%w: greengrass recipe: %v", ErrRelease, err)
	}
	return []byte(s), nil
}

func writeGreengrass(cfg Config) (string, error) {
	tmpl, err := os.ReadFile(filepath.Join(cfg.Root, GreengrassRecipe))
	if err != nil {
		return "", err
	}
	out, err := RenderRecipe(tmpl, cfg.Version)
	if err != nil {
		return "", err
	}
	name := "greengrass/com.sectun.TunnelAgent-" + cfg.Version + ".json"
	if err := os.MkdirAll(filepath.Join(cfg.Out, "greengrass"), 0o755); err != nil {
		return "", err
	}
	return name, os.WriteFile(filepath.Join(cfg.Out, filepath.FromSlash(name)), out, 0o644)
}
