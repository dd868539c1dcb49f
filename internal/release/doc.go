// Package release builds sectun's release artifacts: for every target an
// archive of the four binaries with LICENSE and a README, SHA256SUMS, a
// CycloneDX SBOM read from the binaries' embedded module graph, .deb and
// .rpm packages (nfpm), an OCI image per Linux architecture with a
// multi-arch index (go-containerregistry), and a Greengrass v2 recipe.
//
// Everything is reproducible: binaries are built with -trimpath,
// -buildvcs=false and an empty build ID, the version is linked in with
// -X, and every timestamp in an archive, package or image is the commit
// time (or SOURCE_DATE_EPOCH). Building the same commit twice gives the
// same bytes; TestReproducible checks it.
//
// The command is `go run ./release` at the repository root.
package release
