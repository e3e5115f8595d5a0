#!/usr/bin/env bash
# Pushes procfleet-master and procfleet-worker (the local `latest`, as `make images` built them)
# to a registry, as REGISTRY/procfleet-master:TAG and :latest (TAG: the package version unless
# given), for hosts that pull from there (deploy/kubernetes/, docker run on another host).
# The registry-named local tags are removed again afterwards: locally the images keep their
# own names.
#
# Usage: scripts/push.sh REGISTRY [TAG]   (make push REGISTRY=host:port [TAG=...])
#   REGISTRY  host:port, optionally with a path: registry.example:5000/team
# Docker speaks plain HTTP only to registries on 127.0.0.0/8 by default; another plain-HTTP one
# must be in the daemon's "insecure-registries".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

registry=${1:-}
tag=${2:-$(package_version)}
case "$registry" in
    "" | *://* | */ )
        say "give the registry as host:port[/path], without a scheme or a trailing /" \
            "(make push REGISTRY=registry.example:5000)"
        exit 2 ;;
esac

for name in "${IMAGE_NAMES[@]}"; do
    if ! docker image inspect "$name:latest" >/dev/null 2>&1; then
        say "no local image $name:latest: run 'make images' first"
        exit 2
    fi
done

for name in "${IMAGE_NAMES[@]}"; do
    for t in "$tag" latest; do
        ref=$registry/$name:$t
        docker tag "$name:latest" "$ref"
        if ! docker push -q "$ref" >/dev/null; then
            docker image rm "$ref" >/dev/null 2>&1 || true
            say "could not push $ref (is the registry up, and is it in the daemon's" \
                "insecure-registries if it is plain HTTP and not on 127.0.0.0/8?)"
            exit 1
        fi
        digest=$(docker image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$ref" \
            | grep -F "$registry/$name@" | head -n 1)
        docker image rm "$ref" >/dev/null
        say "pushed $ref (${digest##*@})"
        [ "$t" = latest ] && break
    done
done
