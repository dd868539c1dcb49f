package release

import (
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// SBOM is the part of a CycloneDX 1.5 document that WriteSBOM writes.
type SBOM struct {
	BOMFormat    string          `json:"bomFormat"`
	SpecVersion  string          `json:"specVersion"`
	SerialNumber string          `json:"serialNumber"`
	Version      int             `json:"version"`
	Metadata     SBOMMetadata    `json:"metadata"`
	Components   []SBOMComponent `json:"components"`
	Dependencies []SBOMDep       `json:"dependencies"`
}

// SBOMMetadata describes the release itself.
type SBOMMetadata struct {
	Timestamp string        `json:"timestamp"`
	Component SBOMComponent `json:"component"`
	Tools     struct {
		Components []SBOMComponent `json:"components"`
	} `json:"tools"`
}

// SBOMComponent is a binary, a Go module or the Go toolchain.
type SBOMComponent struct {
	BOMRef     string         `json:"bom-ref,omitempty"`
	Type       string         `json:"type"`
	Name       string         `json:"name"`
	Version    string         `json:"version,omitempty"`
	PURL       string         `json:"purl,omitempty"`
	Hashes     []SBOMHash     `json:"hashes,omitempty"`
	Properties []SBOMProperty `json:"properties,omitempty"`
}

// SBOMHash is a file's digest.
type SBOMHash struct {
	Alg     string `json:"alg"`
	Content string `json:"content"`
}

// SBOMProperty is a name/value pair.
type SBOMProperty struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// SBOMDep says which components a component links.
type SBOMDep struct {
	Ref       string   `json:"ref"`
	DependsOn []string `json:"dependsOn"`
}

// WriteSBOM writes a CycloneDX JSON SBOM of the binaries to path: the
// modules each one links, as the Go linker recorded them (what `go
// version -m` prints), with their go.sum hashes, and the Go toolchain.
func WriteSBOM(path, version string, t time.Time, binaries []string) error {
	doc := SBOM{BOMFormat: "CycloneDX", SpecVersion: "1.5", Version: 1}
	doc.Metadata.Timestamp = t.UTC().Format(time.RFC3339)
	doc.Metadata.Component = SBOMComponent{BOMRef: "pkg:golang/github.com/sectun/sectun@" + version, Type: "application", Name: "sectun", Version: version, PURL: "pkg:golang/github.com/sectun/sectun@" + version}
	doc.Metadata.Tools.Components = []SBOMComponent{{Type: "application", Name: "sectun-release", Version: version}}
	mods := map[string]SBOMComponent{}
	var goVersion string
	for _, bin := range binaries {
		info, err := buildinfo.ReadFile(bin)
		if err != nil {
			return fmt.Errorf("%w: sbom: %s: %v", ErrRelease, bin, err)
		}
		data, err := os.ReadFile(bin)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		goVersion = info.GoVersion
		name := strings.TrimSuffix(filepath.Base(bin), ".exe")
		ref := "binary:" + name
		var props []SBOMProperty
		for _, s := range info.Settings {
			props = append(props, SBOMProperty{Name: "go:build:" + s.Key, Value: s.Value})
		}
		doc.Components = append(doc.Components, SBOMComponent{BOMRef: ref, Type: "application", Name: name, Version: version,
			PURL:       "pkg:golang/" + info.Path + "@" + version,
			Hashes:     []SBOMHash{{Alg: "SHA-256", Content: hex.EncodeToString(sum[:])}},
			Properties: append(props, SBOMProperty{Name: "go:package", Value: info.Path})})
		dep := SBOMDep{Ref: ref, DependsOn: []string{"pkg:golang/stdlib@" + info.GoVersion}}
		for _, m := range info.Deps {
			if m.Replace != nil {
				m = m.Replace
			}
			purl := "pkg:golang/" + m.Path + "@" + m.Version
			c := SBOMComponent{BOMRef: purl, Type: "library", Name: m.Path, Version: m.Version, PURL: purl}
			if m.Sum != "" {
				c.Properties = []SBOMProperty{{Name: "go:sum", Value: m.Sum}}
			}
			mods[purl] = c
			dep.DependsOn = append(dep.DependsOn, purl)
		}
		sort.Strings(dep.DependsOn)
		doc.Dependencies = append(doc.Dependencies, dep)
	}
	std := "pkg:golang/stdlib@" + goVersion
	mods[std] = SBOMComponent{BOMRef: std, Type: "library", Name: "stdlib", Version: goVersion, PURL: std}
	var refs []string
	for r := range mods {
		refs = append(refs, r)
	}
	sort.Strings(refs)
	for _, r := range refs {
		doc.Components = append(doc.Components, mods[r])
	}
	sort.Slice(doc.Dependencies, func(i, j int) bool { return doc.Dependencies[i].Ref < doc.Dependencies[j].Ref })
	body, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	// The serial number is derived from the content, so it is the same
	// for the same build (a random one would break reproducibility).
	h := sha256.Sum256(body)
	h[6] = h[6]&0x0f | 0x50 // UUID version 5 layout, variant RFC 4122
	h[8] = h[8]&0x3f | 0x80
	u := hex.EncodeToString(h[:16])
	doc.SerialNumber = "urn:uuid:" + u[0:8] + "-" + u[8:12] + "-" + u[12:16] + "-" + u[16:20] + "-" + u[20:32]
	body, err = json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(body, '\n'), 0o644)
}
