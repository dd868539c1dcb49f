// Package tunnelsctl is `tunneld tunnels list|describe|close`: the
// management API of a running tunneld, for operators without the AWS
// CLI. It finds the endpoint, the API key and the CA where tunneld keeps
// them (--config, --data-dir) and signs requests with internal/operator.
package tunnelsctl
