#!/bin/sh
# Builds the terminal's WebAssembly SSH client (./wasm) into
# assets/sshclient.wasm, and copies the Go toolchain's wasm_exec.js next to
# it. Run by `go generate ./internal/console`; the results are committed,
# so `go build` and `go test` need no extra step. TestWasmUpToDate checks
# that a rebuild with the recorded Go version gives the same bytes.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
GOOS=js GOARCH=wasm CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags="-s -w -buildid=" -o assets/sshclient.wasm ./wasm
root=$(go env GOROOT)
if [ -f "$root/lib/wasm/wasm_exec.js" ]; then
	cp "$root/lib/wasm/wasm_exec.js" assets/wasm_exec.js
else
	cp "$root/misc/wasm/wasm_exec.js" assets/wasm_exec.js
fi
go env GOVERSION > assets/sshclient.wasm.go-version
echo "built assets/sshclient.wasm ($(wc -c < assets/sshclient.wasm) bytes) with $(cat assets/sshclient.wasm.go-version)"
