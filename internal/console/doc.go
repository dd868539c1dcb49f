// Package console is tunneld's web console, served at /console on the
// listener: sign-in with an API access key, pages for the node, its
// tunnels and devices, and a terminal whose SSH client runs in the
// browser (WebAssembly, see assets/ and wasm/), so tunneld relays only
// ciphertext and never sees an SSH password or key.
//
// Sessions: signing in with an access key ID and its secret (the keys
// tunneld accepts for SigV4) makes a server-side session named by a
// random cookie (__Host-sectun-console: HttpOnly, Secure, SameSite=Strict,
// Path=/). A session ends at sign-out, after Config.IdleTimeout without a
// request, or Config.MaxAge after sign-in, whichever comes first. Every
// change (POST) needs the session's CSRF token in the X-CSRF-Token header
// (or the csrf form field) and a same-origin Origin header when the
// browser sends one. Failed sign-ins count against Config.FailureLimit,
// per client address, before any secret is compared. The console refuses
// plaintext HTTP unless the client is on loopback (a reverse proxy on the
// same host).
//
// Actions go through the management API's own operations (Config.API,
// api.Server.Invoke), so the console and the AWS API cannot drift; each
// is logged by the API with the session's access key ID and via=console.
// Pages read tunnels from the store (with paging) and live figures from
// the relay.
//
// Assets (HTML, CSS, JS, the vendored xterm.js and the prebuilt
// WebAssembly SSH client) are embedded; see assets/README.md for how the
// vendored and generated files are refreshed. Every answer carries a
// strict Content-Security-Policy: nothing but this origin's own scripts
// (and WebAssembly compilation on the terminal page).
//
// Concurrency: a Console is safe for concurrent use.
package console
