#!/usr/bin/env bash
# Makes sure .env gives docker compose a PROCFLEET_AUTHKEY: writes a random one (mode 600) when
# .env is missing or has none; never changes a key that is there.
#
# Usage: scripts/env-file.sh [FILE]   (default .env)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

file=${1:-.env}
if [ -f "$file" ] && grep -q '^PROCFLEET_AUTHKEY=.' "$file"; then
    exit 0
fi
umask 077
key=$("${PYTHON:-python3}" -c 'import secrets; print(secrets.token_urlsafe(32))')
if [ ! -f "$file" ]; then
    echo "# For docker compose; written by scripts/env-file.sh. Keep it secret." >"$file"
fi
echo "PROCFLEET_AUTHKEY=$key" >>"$file"
chmod 600 "$file"
say "wrote a new random PROCFLEET_AUTHKEY to $file"
