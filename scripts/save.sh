#!/usr/bin/env bash
# Writes procfleet-master:TAG and procfleet-worker:TAG (TAG: the package version unless given;
# tagged from the local `latest` if missing) into one gzipped tarball, for hosts without a
# registry: copy it over and `make load FILE=...` (scripts/load.sh) there.
#
# Usage: scripts/save.sh [--tag TAG] [FILE]   (make save [TAG=...] [FILE=...])
#   FILE  default build/procfleet-images-TAG.tar.gz
set -euo pipefail
here=$PWD    # FILE is the caller's path
cd "$(dirname "$0")/.."
. scripts/lib.sh

tag=$(package_version)
if [ "${1:-}" = --tag ]; then tag=${2:?--tag needs a value}; shift 2; fi
if [ -n "${1:-}" ]; then
    case "$1" in /*) file=$1 ;; *) file=$here/$1 ;; esac
else
    file=$PWD/build/procfleet-images-$tag.tar.gz
fi

refs=()
for name in "${IMAGE_NAMES[@]}"; do
    if ! docker image inspect "$name:$tag" >/dev/null 2>&1; then
        if ! docker image inspect "$name:latest" >/dev/null 2>&1; then
            say "no local image $name:$tag or $name:latest: run 'make images' first"
            exit 2
        fi
        docker tag "$name:latest" "$name:$tag"
    fi
    refs+=("$name:$tag")
done

mkdir -p "$(dirname "$file")"
# Written aside and renamed, so an interrupted save never leaves a truncated tarball behind.
docker save "${refs[@]}" | gzip -1 >"$file.partial"
mv -f "$file.partial" "$file"
say "saved ${refs[*]} to $file ($(du -h "$file" | cut -f1)); on the other host: make load FILE=${file##*/}"
