//go:build race

package release

// raceEnabled: under the race detector the release build's compression
// (gzip, zip, deb, rpm, image layers) runs instrumented, many times slower.
const raceEnabled = true
