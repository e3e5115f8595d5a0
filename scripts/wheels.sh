#!/usr/bin/env bash
# Downloads, on the host, the wheels the images need (our pyprojects' third-party build requirements
# and dependencies) into build/wheels/. The image builds (Dockerfile) install offline from there
# when it holds wheels, so an image build needs no network (and no CA certificates) inside it.
#
# Usage: scripts/wheels.sh
# Env: PYTHON (host interpreter with pip, default python3), WHEELS_DIR (default build/wheels),
#      WHEELS_PYTHON_VERSIONS (the Pythons an image may run, default "3.11 3.12 3.13").
# msgspec is compiled: each Python gets its own wheel, for this host's platform (build images on
# the architecture they run on, or leave build/wheels/ empty and let the build use the index).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
dest=${WHEELS_DIR:-build/wheels}
pyvers=${WHEELS_PYTHON_VERSIONS:-3.11 3.12 3.13}

say() { printf 'wheels: %s\n' "$*" >&2; }

mkdir -p "$dest"
tmp=$(mktemp -d "$dest/.download.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

"$python" scripts/requirements.py shared/pyproject.toml master/pyproject.toml worker/pyproject.toml \
    >"$tmp/requirements.txt"
say "downloading $(paste -sd' ' "$tmp/requirements.txt") for Python $pyvers into $dest/"
failed=0
for pyver in $pyvers; do
    if ! timeout 300 "$python" -m pip download --quiet --disable-pip-version-check \
            --only-binary=:all: --python-version "$pyver" \
            --dest "$tmp" -r "$tmp/requirements.txt"; then
        failed=1
        break
    fi
done
if [ "$failed" = 1 ]; then
    if compgen -G "$dest/*.whl" >/dev/null; then
        say "download failed; keeping the wheels already in $dest/"
        exit 0
    fi
    say "download failed and $dest/ has no wheels: check this host's access to the package index"
    exit 1
fi
# Replace the previous set, so stale versions do not linger.
rm -f "$dest"/*.whl
mv "$tmp"/*.whl "$dest"/
say "ready: $(cd "$dest" && ls -- *.whl | paste -sd' ')"
