#!/usr/bin/env bash
# Stops and removes the compose containers and network (extra arguments go to `compose down`,
# e.g. -v for volumes). Works without a key.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
with_any_key compose down --remove-orphans "$@"
