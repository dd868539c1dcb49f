#!/bin/sh
# Makes ./secrets for the compose cluster: a CA, a server certificate for
# localhost and the node names, and an API access key, shared by all nodes.
set -eu
cd "$(dirname "$0")"
mkdir -p secrets && cd secrets
[ -f tls.crt ] && { echo "secrets/ exists"; exit 0; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=sectun compose CA" -keyout ca.key -out ca.pem
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout tls.key -out tls.csr
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:tunneld-1,DNS:tunneld-2,DNS:tunneld-3\n' > san.ext
openssl x509 -req -in tls.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 -extfile san.ext -out tls.crt
rm -f tls.csr san.ext ca.srl
id="AKIA$(openssl rand -hex 8 | tr a-f A-F)"
printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$id" "$(openssl rand -base64 30)" > aws-credentials
chmod 0644 tls.key aws-credentials   # read by the image's user 65532
echo "made secrets/: trust secrets/ca.pem; API key in secrets/aws-credentials"
