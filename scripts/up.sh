#!/usr/bin/env bash
# Runs the compose demo: the master and WORKERS workers until the master exits, then removes the
# containers and the network. Exits with the master's code (0 all ok, 1 some failed, 2 usage or
# configuration, 3 timeout/unfinished).
#
# Usage: scripts/up.sh [WORKERS]   (default $WORKERS or 4; needs the images and a key: `make up`)
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

workers=${1:-${WORKERS:-4}}
# The demo starts once every worker has joined, so each gets its share (compose passes it on).
export PROCFLEET_WAIT_WORKERS=${PROCFLEET_WAIT_WORKERS:-$workers}

# Ctrl-C reaches compose too, which stops the containers; a handler (not an ignore, which compose
# would inherit) keeps this shell alive to remove them even if compose dies of the signal.
trap : INT TERM

# --exit-code-from implies --abort-on-container-exit: when the first container exits (often a
# worker told that the batch is over), compose stops the rest; the master answers SIGTERM after
# its batch with the batch's own exit code, which compose returns.
compose up --scale worker="$workers" --exit-code-from master
code=$?

# Trust the master container over compose. docker-compose v1 returns 0 after Ctrl-C, and 1
# ("unhealthy") without attaching when the master exits before its first health check, e.g. on a
# configuration error: then show what the master said.
master=$(with_any_key compose ps -a -q master 2>/dev/null | head -n 1)
state=$( [ -n "$master" ] && docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$master" 2>/dev/null)
if [ "${state%% *}" = exited ] && [ "${state##* }" != "$code" ]; then
    if [ "$code" != 0 ]; then
        say "compose returned $code but the master exited ${state##* }; its last lines:"
        docker logs --tail 20 "$master" 2>&1 | sed 's/^/  master | /' >&2
    fi
    code=${state##* }
fi

# The results live on the master's `state` volume, beside its journal and the summary.
if [ -n "$master" ] && docker cp "$master:/var/lib/procfleet/results.jsonl" results.jsonl 2>/dev/null; then
    say "results: results.jsonl ($(wc -l < results.jsonl) lines)"
fi
if [ -n "$master" ] && docker cp "$master:/var/lib/procfleet/summary.json" summary.json 2>/dev/null; then
    say "summary: summary.json"
fi

# A finished batch (0, 1) no longer needs its journal; an unfinished one keeps it to resume.
down_args=(--remove-orphans)
case "$code" in
    0|1) down_args+=(-v) ;;
    *) say "the batch is unfinished: 'make up' again resumes it from the journal; 'scripts/down.sh -v' discards it" ;;
esac
if ! with_any_key compose down "${down_args[@]}" >/dev/null 2>&1; then
    say "could not remove the containers: run 'make down'"
fi
say "master exited $code"
exit "$code"
