#!/usr/bin/env bash
# Stops and removes the service-mode cluster (scripts/serve.sh): its containers, network and
# volume (the master keeps nothing there in service mode). Workers drain first; a job still
# running ends unfinished for its submitter (exit 3). Works without a key.
#
# Usage: scripts/serve-down.sh [compose down options]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
with_any_key compose_serve down -v --remove-orphans "$@"
