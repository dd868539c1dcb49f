package release

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager
)

// pkgArch is the architecture of a package made from a Linux target.
type pkgArch struct {
	target    Target
	deb, rpm  string
	debTarget bool // the .deb of this arch uses this target
	rpmTarget bool
}

// pkgArches: Debian's armhf (which Raspberry Pi OS shares, down to the
// ARMv6 Pi Zero/1) gets the ARMv6 build, RPM's armv7hl the ARMv7 one.
var pkgArches = []pkgArch{
	{target: Target{GOOS: "linux", GOARCH: "amd64"}, deb: "amd64", rpm: "x86_64", debTarget: true, rpmTarget: true},
	{target: Target{GOOS: "linux", GOARCH: "arm64"}, deb: "arm64", rpm: "aarch64", debTarget: true, rpmTarget: true},
	{target: Target{GOOS: "linux", GOARCH: "arm", GOARM: "6"}, deb: "armhf", debTarget: true},
	{target: Target{GOOS: "linux", GOARCH: "arm", GOARM: "7"}, rpm: "armv7hl", rpmTarget: true},
}

// PackageSpec is one package: its name, description and files.
type PackageSpec struct {
	Name, Description string
	// Binaries go to /usr/bin.
	Binaries []string
	// Units go to /usr/lib/systemd/system, Sysusers to /usr/lib/sysusers.d
	// (files of deploy/systemd and deploy/sysusers).
	Units, Sysusers []string
	// Configs are files of deploy/etc installed in /etc/sectun as
	// configuration files that upgrades keep.
	Configs []string
	// Scripts is the prefix of deploy/package/<Scripts>-{postinstall,
	// preremove,postremove}.sh; "" for none.
	Scripts string
}

// Packages are the .deb/.rpm packages of a release.
var Packages = []PackageSpec{
	{Name: "tunneld", Description: "sectun tunneld: self-hosted AWS IoT Secure Tunneling service (management API and /tunnel relay)",
		Binaries: []string{"tunneld"}, Units: []string{"tunneld.service"}, Sysusers: []string{"tunneld.conf"},
		Configs: []string{"tunneld.conf"}, Scripts: "tunneld"},
	{Name: "tunnel-agent", Description: "sectun tunnel-agent: device agent that opens AWS IoT secure tunnels on MQTT notifications",
		Binaries: []string{"tunnel-agent"}, Units: []string{"tunnel-agent.service"}, Sysusers: []string{"tunnel-agent.conf"},
		Configs: []string{"agent.json"}, Scripts: "tunnel-agent"},
	{Name: "localproxy", Description: "sectun localproxy (drop-in for the AWS IoT Secure Tunneling local proxy) and the sectun operator CLI",
		Binaries: []string{"localproxy", "sectun"}},
}

// PackageVersion turns a release version into a deb/rpm version: v1.2.3
// is 1.2.3, v1.2.3-rc1 1.2.3~rc1 (sorts before 1.2.3), devel-<commit>
// 0.0.0~devel.<commit>.
func PackageVersion(v string) string {
	if len(v) > 1 && v[0] == 'v' && v[1] >= '0' && v[1] <= '9' {
		return strings.ReplaceAll(v[1:], "-", "~")
	}
	return "0.0.0~" + strings.ReplaceAll(v, "-", ".")
}

func writePackages(cfg Config, res *Result, d *docs) ([]string, error) {
	var names []string
	for _, a := range pkgArches {
		binDir, ok := res.Binaries[a.target.Name()]
		if !ok {
			continue
		}
		for _, spec := range Packages {
			for _, format := range []string{"deb", "rpm"} {
				if format == "deb" && !a.debTarget || format == "rpm" && !a.rpmTarget {
					continue
				}
				arch := a.deb
				if format == "rpm" {
					arch = a.rpm
				}
				name, err := writePackage(cfg, spec, format, arch, binDir, d)
				if err != nil {
					return nil, err
				}
				names = append(names, name)
			}
		}
	}
	return names, nil
}

// PackageFile is the file name of a package.
func PackageFile(version, name, format, arch string) string {
	if format == "rpm" {
		return fmt.Sprintf("%s-%s-1.%s.rpm", name, PackageVersion(version), arch)
	}
	return fmt.Sprintf("%s_%s_%s.deb", name, PackageVersion(version), arch)
}

func writePackage(cfg Config, spec PackageSpec, format, arch, binDir string, d *docs) (string, error) {
	fi := func(mode os.FileMode) *files.ContentFileInfo {
		return &files.ContentFileInfo{Owner: "root", Group: "root", Mode: mode, MTime: cfg.Time}
	}
	var contents files.Contents
	add := func(src, dst, typ string, mode os.FileMode) {
		contents = append(contents, &files.Content{Source: src, Destination: dst, Type: typ, FileInfo: fi(mode)})
	}
	deploy := filepath.Join(cfg.Root, "deploy")
	for _, b := range spec.Binaries {
		add(filepath.Join(binDir, b), "/usr/bin/"+b, files.TypeFile, 0o755)
		if d != nil {
			for _, f := range d.forBinary(b) {
				add(filepath.Join(d.dir, f.Name), d.installPath(f.Name), files.TypeFile, 0o644)
			}
		}
	}
	for _, u := range spec.Units {
		add(filepath.Join(deploy, "systemd", u), "/usr/lib/systemd/system/"+u, files.TypeFile, 0o644)
	}
	for _, u := range spec.Sysusers {
		add(filepath.Join(deploy, "sysusers", u), "/usr/lib/sysusers.d/"+u, files.TypeFile, 0o644)
	}
	for _, c := range spec.Configs {
		add(filepath.Join(deploy, "etc", c), "/etc/sectun/"+c, files.TypeConfigNoReplace, 0o644)
	}
	add(filepath.Join(cfg.Root, "LICENSE"), "/usr/share/doc/"+spec.Name+"/copyright", files.TypeFile, 0o644)
	info := &nfpm.Info{
		Name: spec.Name, Arch: arch, Platform: "linux",
		Version: PackageVersion(cfg.Version), VersionSchema: "none", Release: "1",
		Section: "net", Priority: "optional",
		Maintainer:  "sectun maintainers <sectun@users.noreply.github.com>",
		Description: spec.Description, Vendor: "sectun", Homepage: "https://github.com/sectun/sectun",
		License: "Apache-2.0", MTime: cfg.Time,
		Overridables: nfpm.Overridables{Contents: contents, Umask: 0o022},
	}
	info.RPM.BuildHost = "sectun-release"
	info.RPM.Summary = spec.Description
	info.RPM.Group = "Applications/Internet"
	if spec.Scripts != "" {
		p := func(s string) string { return filepath.Join(deploy, "package", spec.Scripts+"-"+s+".sh") }
		info.Scripts = nfpm.Scripts{PostInstall: p("postinstall"), PreRemove: p("preremove"), PostRemove: p("postremove")}
		info.Depends = []string{"passwd"}
		if format == "rpm" {
			info.Depends = []string{"shadow-utils"}
		}
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, format); err != nil {
		return "", fmt.Errorf("%w: package %s (%s): %v", ErrRelease, spec.Name, format, err)
	}
	pkgr, err := nfpm.Get(format)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	if err := pkgr.Package(info, &buf); err != nil {
		return "", fmt.Errorf("%w: package %s (%s): %v", ErrRelease, spec.Name, format, err)
	}
	name := PackageFile(cfg.Version, spec.Name, format, arch)
	return name, os.WriteFile(filepath.Join(cfg.Out, name), buf.Bytes(), 0o644)
}
