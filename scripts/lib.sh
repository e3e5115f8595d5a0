# Sourced by the scripts: messages and the compose command.

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
