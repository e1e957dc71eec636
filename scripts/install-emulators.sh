#!/usr/bin/env bash
# Installs the npm emulators the test suite starts on loopback (Azurite, Cosmos DB server),
# and asl-validator (checks the chunked path's Step Functions definition), exactly as pinned
# in package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v npm >/dev/null || { echo "npm is needed for the Azure emulators: install Node.js 18+ and npm" >&2; exit 1; }
npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
