#!/usr/bin/env bash
# Builds the local base image (procfleet-base:bookworm: Debian bookworm, python3, venv) from Debian
# packages with mmdebstrap + `docker import`, for machines that cannot pull python:*-slim.
#
# Usage: scripts/build-base-image.sh [--force]
#   --force   rebuild even if the image already exists
# Env: PROCFLEET_LOCAL_BASE (tag), DEBIAN_MIRROR, BASE_IMAGE_TIMEOUT (seconds, default 900).
set -euo pipefail

tag=${PROCFLEET_LOCAL_BASE:-procfleet-base:bookworm}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
limit=${BASE_IMAGE_TIMEOUT:-900}

say() { printf 'build-base-image: %s\n' "$*" >&2; }

force=0
case "${1:-}" in
    "") ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,8s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) say "unknown argument '$1' (only --force)"; exit 2 ;;
esac

if [ "$force" = 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    say "$tag already exists; nothing to do (--force rebuilds it)"
    exit 0
fi

if ! command -v mmdebstrap >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        say "mmdebstrap is missing: install it (apt-get install mmdebstrap) or run this as root"
        exit 1
    fi
    say "installing mmdebstrap"
    timeout 300 apt-get update -q
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q --no-install-recommends mmdebstrap
fi

# root mode needs root; otherwise unshare mode needs subuid/subgid ranges for this user.
if [ "$(id -u)" = 0 ]; then mode=root; else mode=unshare; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/procfleet-base.XXXXXX")
trap 'rm -rf "$work"' EXIT

say "bootstrapping Debian $suite from $mirror (mode $mode, at most ${limit}s)"
start=$SECONDS
# Like the python:*-slim images: no docs, man pages or translations (copyright files stay).
# passwd brings useradd for the images' non-root user.
timeout "$limit" mmdebstrap --quiet --variant=minbase --mode="$mode" \
    --include=python3,python3-venv,ca-certificates,passwd \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    "$suite" "$work/rootfs.tar" "$mirror"

say "importing as $tag"
timeout 300 docker import \
    -c 'ENV LANG=C.UTF-8' \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["python3"]' \
    -m "procfleet base: Debian $suite minbase with python3, python3-venv (mmdebstrap)" \
    "$work/rootfs.tar" "$tag" >/dev/null

say "built $tag in $((SECONDS - start))s: $(docker run --rm "$tag" python3 --version 2>&1)"
