#!/usr/bin/env bash
# Loads the images of a tarball from scripts/save.sh (make save) and tags each one `latest` as
# well, so that docker-compose.yml (which runs `latest`) uses them; --no-latest leaves the local
# `latest` tags as they are.
#
# Usage: scripts/load.sh [--no-latest] FILE   (make load FILE=...)
set -euo pipefail
here=$PWD    # FILE is the caller's path
cd "$(dirname "$0")/.."
. scripts/lib.sh
latest=yes
if [ "${1:-}" = --no-latest ]; then latest=no; shift; fi
file=${1:-}
if [ -z "$file" ]; then say "usage: scripts/load.sh [--no-latest] FILE (make load FILE=...)"; exit 2; fi
case "$file" in /*) ;; *) file=$here/$file ;; esac
if [ ! -r "$file" ]; then say "cannot read $file"; exit 2; fi

# docker load says "Loaded image: NAME:TAG" for each tag in the tarball.
loaded=$(docker load -i "$file" | sed -n 's/^Loaded image: //p')
if [ -z "$loaded" ]; then say "no tagged image in $file"; exit 1; fi
for ref in $loaded; do
    say "loaded $ref"
    name=${ref%:*}
    if [ "$latest" = yes ] && [ "${ref##*:}" != latest ]; then
        docker tag "$ref" "$name:latest"
        say "tagged $name:latest"
    fi
done
