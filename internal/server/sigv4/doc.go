// Package sigv4 verifies AWS Signature Version 4 on incoming HTTP requests,
// the way AWS services do, so that the AWS CLI and SDKs can call tunneld
// with ordinary access keys.
//
// Only the Authorization header form is accepted (no presigned query
// strings). The canonical request is rebuilt as the AWS SDKs build it: the
// URI path percent-encoded a second time (no dot-segment normalisation,
// like aws-sdk-go-v2), the query sorted after encoding, the signed headers
// with trimmed values and inner runs of spaces collapsed, and the payload
// hash computed from the body (an x-amz-content-sha256 header, when sent,
// must equal it). Host, and X-Amz-Target, Content-Type and
// X-Amz-Content-Sha256 when the request carries them, must be among the
// signed headers, so that a signature cannot be moved to another
// operation.
//
// Concurrency: a Verifier is safe for concurrent use if its Credentials is
// (a Credentials map must not be written while in use).
//
// Errors: Verify returns an *Error carrying the code, HTTP status and
// message AWS returns for the same failure; it wraps one of the Err*
// sentinels, so callers can use errors.Is. Messages never contain secrets
// or signatures.
package sigv4
