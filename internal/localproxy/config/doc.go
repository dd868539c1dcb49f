// Package config is the configuration layer of sectun's localproxy: it
// turns a command line, the environment and the files those name into a
// validated Config, with the options, files, environment variables and
// settings JSON of the AWS reference local proxy (v3.3.1), so that
// localproxy is a drop-in replacement for it.
//
// Sources, highest precedence first, per option: the command line, the
// --config file (INI: long option names as keys, '#' comments), the
// environment (AWSIOT_TUNNEL_ACCESS_TOKEN, AWSIOT_TUNNEL_ENDPOINT,
// AWSIOT_TUNNEL_REGION, AWSIOT_TUNNEL_CLIENT_TOKEN; web proxy from
// https_proxy/HTTPS_PROXY), then defaults. Fine-grained settings come from
// DefaultSettings with a --settings-json file applied. Service ID mappings
// come from -s/-d, else from the files of --config-dir (default: ./config,
// then config beside the executable); Resolve matches them against the
// service IDs a tunnel announces.
//
// Differences from the reference, all of them refusing input the reference
// would mis-handle later or adding an unambiguous form: a repeated service
// ID in -s/-d, an invalid -y value, a settings value of the wrong type, a
// missing --capath and a destination without any mapping are errors at
// start-up; -e also accepts ws:// and wss:// URLs and bracketed IPv6
// addresses, -d also accepts [v6addr]:port; option values are
// case-insensitive where the reference's are case-sensitive (-m, -y).
//
// Concurrency: Parse and the other functions are safe to call
// concurrently; a Config is read-only after Parse (Resolve does not
// modify it). Nothing here starts goroutines or logs: notes for the log
// are returned in Config.Warnings and never contain a token.
//
// Errors: every error wraps one sentinel of errors.go (ErrUsage,
// ErrNoAccessToken, ErrMapping, ...); its text is a single line naming the
// problem, where the value came from and what to do.
package config
