// Package api serves the AWS IoTSecuredTunneling management API (AWS JSON
// 1.1 protocol: POST / with X-Amz-Target "IoTSecuredTunneling.<Op>"), so
// the AWS CLI and SDKs work against tunneld with --endpoint-url. It
// implements OpenTunnel, CloseTunnel, DescribeTunnel, ListTunnels,
// RotateTunnelAccessToken, TagResource, UntagResource and
// ListTagsForResource with the field names, constraints and error shapes of
// the AWS API model (botocore iotsecuretunneling/2018-10-05), verifies
// Signature V4 (package sigv4), and keeps tunnels in a store.Store.
//
// Access tokens are made with package token; only their hashes are stored
// and the plaintext is returned once (OpenTunnel, RotateTunnelAccessToken)
// and handed to the Notifier. Logs carry only token.Short hashes of tokens, never a
// token or a request body.
//
// A Server also sweeps tunnels: Run closes tunnels whose lifetime has run
// out (disconnecting their peers through Config.Peers) and deletes closed
// tunnels older than Config.Retention. Sweep does one pass, for tests and
// for callers with their own schedule.
//
// Concurrency: a Server is safe for concurrent use; ServeHTTP may run on
// many goroutines while Run sweeps. Peers and Notifier are called
// synchronously from request handlers and from Sweep, after the store has
// been updated; they must not block for long.
//
// Errors: API errors are answered the AWS way: an HTTP status (400 for
// model errors, 403 for signature errors, 500 for store failures), an
// X-Amzn-ErrorType header and a body {"__type": code, "message": text}.
// Every response carries an X-Amzn-RequestId. New reports configuration
// errors wrapped around ErrConfig.
package api
