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
# shellcheck disable=SC2034  # used by the scripts that source this
IMAGE_NAMES=(procfleet-master procfleet-worker)
package_version() { sed -n 's/^version = "\(.*\)"$/\1/p' master/pyproject.toml | head -n 1; }

# After `compose up --exit-code-from master` (scripts/up.sh, run.sh) returned COMPOSE_CODE: sets
# BATCH_CODE, the batch's exit code, Docker's record of the master's beating compose's (v1
# returns 0 after Ctrl-C). When compose showed none of the master's output, the master's last
# lines go to stderr and its last one to MASTER_SAID: e.g. with a bad PROCFLEET_TASK_TIMEOUT the
# master exits 2 before its first health check, and compose only says "container ... is
# unhealthy" and starts no worker.
# Usage: batch_outcome COMPOSE_CODE MASTER_CONTAINER_ID
# shellcheck disable=SC2034  # read by the scripts that source this
BATCH_CODE='' MASTER_SAID=''
batch_outcome() {
    local status exit health workers=0 id
    local state='{{.State.Status}} {{.State.ExitCode}} {{with .State.Health}}{{.Status}}{{end}}'
    BATCH_CODE=$1 MASTER_SAID=
    [ -n "$2" ] || return 0
    read -r status exit health < <(docker inspect -f "$state" "$2" 2>/dev/null)
    # Workers that ever started (compose v2 creates them all before it waits for the master).
    for id in $(with_any_key compose ps -a -q worker 2>/dev/null); do
        [ "$(docker inspect -f '{{.State.StartedAt}}' "$id" 2>/dev/null)" = 0001-01-01T00:00:00Z ] \
            || workers=$((workers + 1))
    done
    if [ "$status" = exited ]; then
        if [ "$BATCH_CODE" != 0 ] && { [ "$exit" != "$BATCH_CODE" ] || [ "$workers" -eq 0 ]; }; then
            say "compose returned $BATCH_CODE; the master exited $exit, and its last lines were:"
            master_tail "$2"
        fi
        BATCH_CODE=$exit
        # Exit 2 is a refused configuration or input, said in the master's last line: keep it
        # for the closing message even when compose showed it among the rest. (docker-compose
        # v1 may even take a master that exited before its first poll for healthy and start
        # the workers: its health check sees no running container.)
        if [ "$exit" = 2 ] && [ -z "$MASTER_SAID" ]; then master_tail "$2" quiet; fi
    elif [ "$BATCH_CODE" != 0 ] && [ "$health" = unhealthy ]; then
        say "the master is $status but its health check (procfleet ping) fails; its last lines:"
        master_tail "$2"
        BATCH_CODE=3    # stopped by `down` with its batch unfinished, not "some tasks failed"
    fi
}

# The master's last log lines, indented, to stderr (not with a second argument `quiet`); the
# last non-empty one into MASTER_SAID. A path the master knows the file by (MASTER_PATH, e.g.
# run.sh's mount) is shown as the caller's (SHOWN_PATH).
master_tail() {
    local lines
    lines=$(docker logs --tail 20 "$1" 2>&1)
    if [ -n "${MASTER_PATH:-}" ]; then
        lines=$(printf '%s\n' "$lines" | FROM=$MASTER_PATH TO=${SHOWN_PATH:-$MASTER_PATH} awk '{
            out = ""
            while ((i = index($0, ENVIRON["FROM"])) > 0) {
                out = out substr($0, 1, i - 1) ENVIRON["TO"]; $0 = substr($0, i + length(ENVIRON["FROM"]))
            }
            print out $0 }')
    fi
    [ "${2:-}" = quiet ] || printf '%s\n' "$lines" | sed 's/^/  master | /' >&2
    # shellcheck disable=SC2034  # read by the scripts that source this
    MASTER_SAID=$(printf '%s\n' "$lines" | sed '/^[[:space:]]*$/d' | tail -n 1)
}
