package config

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error Parse, Resolve and LoadSettingsJSON return
// wraps exactly one of these (test with errors.Is); its text is one line
// that says what is wrong, where the value came from, and what to do.
var (
	// ErrUsage: the command line does not parse (unknown option, missing
	// value, stray argument, option given twice, empty value).
	ErrUsage = errors.New("config: bad command line")
	// ErrConfigFile: the --config file has a syntax error or an unknown key.
	ErrConfigFile = errors.New("config: bad --config file")
	// ErrFile: a file or directory named by an option cannot be read or
	// written (--config, --settings-json, --config-dir, --capath,
	// --export-default-settings).
	ErrFile = errors.New("config: file error")
	// ErrNoAccessToken: no access token from any source.
	ErrNoAccessToken = errors.New("config: no access token")
	// ErrAccessToken: the access token holds characters no token has.
	ErrAccessToken = errors.New("config: invalid access token")
	// ErrClientToken: the client token does not match ^[a-zA-Z0-9-]{32,128}$.
	ErrClientToken = errors.New("config: invalid client token")
	// ErrEndpointAndRegion: both an endpoint and a region are set.
	ErrEndpointAndRegion = errors.New("config: both an endpoint and a region are set")
	// ErrNoEndpoint: neither an endpoint nor a region is set.
	ErrNoEndpoint = errors.New("config: no endpoint or region")
	// ErrEndpoint: the endpoint (or the region, or the endpoint a region
	// maps to) is not a usable host[:port] or ws(s):// URL.
	ErrEndpoint = errors.New("config: invalid endpoint")
	// ErrNoMode: none of -s, -d, -m is given.
	ErrNoMode = errors.New("config: no mode")
	// ErrMode: -m has a value other than src, source, dst, destination.
	ErrMode = errors.New("config: invalid mode")
	// ErrModeConflict: -s and -d together, or -s/-d against -m.
	ErrModeConflict = errors.New("config: conflicting mode options")
	// ErrMapping: a -s/-d mapping or a --config-dir entry does not parse.
	ErrMapping = errors.New("config: invalid port mapping")
	// ErrPort: a port is outside 1..65535 (0..65535 for source ports).
	ErrPort = errors.New("config: port out of range")
	// ErrDuplicateService: one service ID is mapped twice in -s/-d.
	ErrDuplicateService = errors.New("config: service ID mapped twice")
	// ErrMixedMappings: a port without a service ID next to named ones.
	ErrMixedMappings = errors.New("config: anonymous and named mappings mixed")
	// ErrNoMapping: destination mode with no mapping at all.
	ErrNoMapping = errors.New("config: no destination mapping")
	// ErrClientType: -y is not V1, V2 or V3.
	ErrClientType = errors.New("config: invalid destination client type")
	// ErrVerbosity: -v is not an integer in 0..255.
	ErrVerbosity = errors.New("config: invalid verbosity")
	// ErrSettings: the --settings-json file is not JSON or a known key has
	// a value of the wrong type or range.
	ErrSettings = errors.New("config: invalid settings")
	// ErrProxyURL: HTTPS_PROXY/https_proxy does not parse.
	ErrProxyURL = errors.New("config: invalid web proxy URL")
	// ErrServiceIDs: the tunnel's service IDs do not fit the configured
	// mappings (returned by Resolve).
	ErrServiceIDs = errors.New("config: service IDs do not match the mappings")
)

// errorf wraps sentinel with a formatted explanation: "<sentinel>: <text>".
func errorf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...)
}
