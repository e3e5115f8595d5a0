# Sourced by the (bash) scripts: messages and the compose command.
# shellcheck shell=bash

say() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

# `docker compose` (v2) when present, else docker-compose (v1); the Makefile passes its choice.
if [ -z "${COMPOSE:-}" ]; then
    if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
fi
# shellcheck disable=SC2086  # "docker compose" is two words
compose() { $COMPOSE "$@"; }

# compose interpolates the whole file, the required key included, even to build or remove
# containers; those commands never use the key, so they may run with a stand-in.
with_any_key() { PROCFLEET_AUTHKEY=${PROCFLEET_AUTHKEY:-not-used-by-this-command} "$@"; }

# The service-mode cluster (docker-compose.serve.yml over docker-compose.yml) is a compose project
# of its own, `<folder>-serve` unless COMPOSE_PROJECT_NAME says otherwise, so that it runs beside
# a `make up` batch and `serve-down -v` never removes that batch's journal.
serve_project() {
    local name=${COMPOSE_PROJECT_NAME:-$(basename "$PWD")-serve}
    # compose's own rule for a project name: lower case, letters, digits, - and _
    name=$(printf '%s' "$name" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9_-')
    printf '%s\n' "$name"
}
SERVE_FILES=(-f docker-compose.yml -f docker-compose.serve.yml)
compose_serve() { compose -p "$(serve_project)" "${SERVE_FILES[@]}" "$@"; }

# The two images, and the version they are tagged with beside `latest` (scripts/images.sh): the
# package's, from master/pyproject.toml (all three packages share one version).
IMAGE_NAMES=(procfleet-master procfleet-worker)
package_version() { sed -n 's/^version = "\(.*\)"$/\1/p' master/pyproject.toml | head -n 1; }
