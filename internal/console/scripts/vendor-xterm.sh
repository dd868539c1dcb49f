#!/bin/sh
# Refreshes the vendored xterm.js from the npm registry: the dist files the
# terminal page loads and the licences. Pinned versions; change them here.
# Usage: internal/console/scripts/vendor-xterm.sh (needs npm and tar).
set -eu
XTERM=6.0.0
FIT=0.11.0
here=$(cd "$(dirname "$0")/.." && pwd)
out=$here/assets/vendor/xterm
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent "@xterm/xterm@$XTERM" "@xterm/addon-fit@$FIT" >/dev/null
mkdir x f
tar xzf "xterm-xterm-$XTERM.tgz" -C x
tar xzf "xterm-addon-fit-$FIT.tgz" -C f
mkdir -p "$out"
cp x/package/lib/xterm.js x/package/css/xterm.css "$out/"
cp x/package/LICENSE "$out/LICENSE-xterm"
cp f/package/lib/addon-fit.js "$out/"
cp f/package/LICENSE "$out/LICENSE-addon-fit"
# The source maps are left out; the files end with a sourceMappingURL the
# browser only fetches with the developer tools open (it gets a 404).
printf '@xterm/xterm %s\n@xterm/addon-fit %s\n' "$XTERM" "$FIT" > "$out/VERSIONS"
(cd "$out" && sha256sum xterm.js xterm.css addon-fit.js > SHA256SUMS)
echo "vendored xterm.js $XTERM and addon-fit $FIT into $out"
