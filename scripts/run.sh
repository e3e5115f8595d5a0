#!/usr/bin/env bash
# Runs one batch of your own tasks through compose (docker-compose.yml with
# docker-compose.run.yml): the master reads TASKS, WORKERS workers run them, and the results
# are copied out next to the task file, as TASKS.results.jsonl. The demo is off.
#
# The task file is copied into a folder of its own that is mounted read-only, readable to the
# images' uid 10001 whatever the file's own owner and mode; the copy also keeps the batch's
# input fixed while it runs. Each task file content is a compose project of its own
# (<folder>-run-<hash>) with its own journal: a finished batch's is removed, an unfinished
# one's (exit 3) is kept, and `make run` with the same file again resumes it.
# Exits with the master's code (0 all ok, 1 some failed, 2 usage, configuration or input, 3
# unfinished); a master that refused its configuration has its one-line error printed last.
#
# Usage: scripts/run.sh TASKS [WORKERS]   (make run TASKS=FILE [WORKERS=4] [IMPORTS=module])
#   PROCFLEET_IMPORTS  the workers' task modules; other PROCFLEET_* settings pass through as
#                      for `make up` (e.g. PROCFLEET_TASK_TIMEOUT, PROCFLEET_RETRIES).
set -uo pipefail
here=$PWD    # TASKS is the caller's path
cd "$(dirname "$0")/.." || exit 2
. scripts/lib.sh

if [ $# -lt 1 ] || [ -z "$1" ]; then
    say "usage: scripts/run.sh TASKS [WORKERS] (make run TASKS=FILE [WORKERS=N] [IMPORTS=module])"
    exit 2
fi
tasks=$1
case "$tasks" in /*) ;; *) tasks=$here/$tasks ;; esac
workers=${2:-${WORKERS:-4}}
if [ ! -f "$tasks" ] || [ ! -r "$tasks" ]; then
    say "cannot read the task file $1"
    exit 2
fi

name=${tasks##*/}
stage=$(mktemp -d "${TMPDIR:-/tmp}/procfleet-run.XXXXXX") || exit 2
trap 'rm -rf "$stage"' EXIT
cp "$tasks" "$stage/$name" || exit 2
# Readable to uid 10001 in the container: its own file when we may give it one, else a
# world-readable copy in a folder nobody else can list.
if [ "$(id -u)" = 0 ]; then
    chown -R 10001:10001 "$stage" && chmod 500 "$stage" && chmod 400 "$stage/$name"
else
    chmod 711 "$stage" && chmod 644 "$stage/$name"
fi

hash=$( { sha256sum "$stage/$name" 2>/dev/null || shasum -a 256 "$stage/$name"; } | cut -c1-12)
project=$(printf '%s-run-%s' "${COMPOSE_PROJECT_NAME:-$(basename "$PWD")}" "$hash" \
    | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9_-')
export COMPOSE_PROJECT_NAME=$project
export COMPOSE_FILE=docker-compose.yml:docker-compose.run.yml COMPOSE_PATH_SEPARATOR=:
export PROCFLEET_RUN_DIR=$stage PROCFLEET_RUN_FILE=$name
# The master's errors name the file as the caller gave it, not as mounted.
export MASTER_PATH=/run/procfleet/$name SHOWN_PATH=$1
# Every worker takes part: nothing is leased until all have joined.
export PROCFLEET_WAIT_WORKERS=${PROCFLEET_WAIT_WORKERS:-$workers}
say "running $1 on $workers workers (compose project $project)"

# up.sh runs the batch, copies the results out, removes the containers (and the journal once
# the batch is finished) and says what the master said if it failed.
trap : INT TERM
scripts/up.sh "$workers" "$tasks.results.jsonl"
code=$?
if [ "$code" -ge 3 ]; then
    say "this batch's compose project is $project: 'COMPOSE_PROJECT_NAME=$project" \
        "scripts/down.sh -v' discards it"
fi
exit "$code"
