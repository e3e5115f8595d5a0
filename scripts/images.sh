#!/usr/bin/env bash
# Builds procfleet-master and procfleet-worker (the Dockerfile's `master` and `worker` targets),
# tagged `latest` and the package version (master/pyproject.toml), through docker-compose.yml,
# with no network needed inside the builds: the wheels come from the host (scripts/wheels.sh),
# and the base image is $PROCFLEET_BASE_IMAGE or the Dockerfile's pinned default, pulled if
# absent; when it cannot be pulled, the local Debian base (scripts/build-base-image.sh) stands in.
#
# Usage: scripts/images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

default=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)
base=${PROCFLEET_BASE_IMAGE:-$default}
local_base=${PROCFLEET_LOCAL_BASE:-procfleet-base:bookworm}

if docker image inspect "$base" >/dev/null 2>&1; then
    say "base image $base is here"
elif say "pulling base image $base (at most 60s)" && timeout 60 docker pull -q "$base" >/dev/null; then
    say "pulled $base"
else
    say "cannot pull $base: building on the local Debian base $local_base instead"
    PROCFLEET_LOCAL_BASE=$local_base scripts/build-base-image.sh
    base=$local_base
fi

scripts/wheels.sh

export PROCFLEET_BASE_IMAGE=$base
say "building the images on $base"
start=$SECONDS
# v1 builds with the legacy builder, which leaves a failed step's container behind unless told.
if [ "$COMPOSE" = docker-compose ]; then build_opts=(--force-rm); else build_opts=(); fi
with_any_key compose build "${build_opts[@]}" master worker
# The version tag names what is in an image for another host (scripts/push.sh, save.sh) and for
# deploy/kubernetes/; compose runs `latest`.
version=$(package_version)
for name in "${IMAGE_NAMES[@]}"; do
    docker tag "$name:latest" "$name:$version"
done
say "built procfleet-master and procfleet-worker, tagged latest and $version, in $((SECONDS - start))s"
