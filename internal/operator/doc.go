// Package operator is the operator's side of sectun: a small client of the
// IoTSecuredTunneling management API (tunneld or AWS) with SigV4 signing
// and the AWS CLI's credential lookup, and Connect, which opens a tunnel to
// a device and serves its source end on local ports in one step (the
// `sectun connect` command).
//
// Concurrency: a Client is safe for concurrent use. Connect blocks until
// its context ends or the tunnel closes; it starts goroutines (the tunnel
// session, the local listeners) and stops them all before returning.
//
// Errors: API error answers are *APIError (wrapping ErrAPI) carrying the
// AWS error code; LoadCredentials fails with ErrNoCredentials. Secrets
// (secret keys, access tokens) never appear in errors or logs; Connect
// prints the destination token to Out only when no thing is named, since
// the user must then hand it to the device.
package operator
