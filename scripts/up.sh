#!/usr/bin/env bash
# Runs the compose demo: the master and WORKERS workers until the master exits, then removes the
# containers and the network. Exits with the master's code (0 all ok, 1 some failed, 2 usage or
# configuration, 3 timeout/unfinished).
#
# Usage: scripts/up.sh [WORKERS [RESULTS]]   (default $WORKERS or 4, and results.jsonl; needs the
# images and a key: `make up`)
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

workers=${1:-${WORKERS:-4}}
results=${2:-results.jsonl}
# The demo starts once every worker has joined, so each gets its share (compose passes it on).
export PROCFLEET_WAIT_WORKERS=${PROCFLEET_WAIT_WORKERS:-$workers}

# Ctrl-C reaches compose too, which stops the containers; a handler (not an ignore, which compose
# would inherit) keeps this shell alive to remove them even if compose dies of the signal.
trap : INT TERM

# The volumes before: whether the master's journal volume is new tells a batch refused at start
# (exit 2, nothing in it) from a resumed one (its journal is kept).
volumes_before=$(docker volume ls -q 2>/dev/null)

# --exit-code-from implies --abort-on-container-exit: when the first container exits (often a
# worker told that the batch is over), compose stops the rest; the master answers SIGTERM after
# its batch with the batch's own exit code, which compose returns.
compose up --scale worker="$workers" --exit-code-from master
code=$?

# Trust the master container over compose, and show what the master said if compose did not.
master=$(with_any_key compose ps -a -q master 2>/dev/null | head -n 1)
batch_outcome "$code" "$master"
code=$BATCH_CODE

# The results live on the master's `state` volume, beside its journal and the summary (which
# `make up` copies out too; `make run` leaves only the results next to the task file).
if [ -n "$master" ] && docker cp "$master:/var/lib/procfleet/results.jsonl" "$results.partial" 2>/dev/null; then
    mv -f "$results.partial" "$results"
    say "results: $results ($(wc -l < "$results") lines)"
fi
rm -f "$results.partial"
if [ "$results" = results.jsonl ] && [ -n "$master" ] \
        && docker cp "$master:/var/lib/procfleet/summary.json" summary.json 2>/dev/null; then
    say "summary: summary.json"
fi

# A finished batch (0, 1) no longer needs its journal; an unfinished one keeps it to resume.
down_args=(--remove-orphans)
case "$code" in
    0|1) down_args+=(-v) ;;
    2)  # refused before anything ran (the message above says why): a journal volume made for
        # nothing goes, a resumed batch's stays
        state=$( [ -n "$master" ] && docker inspect -f \
            '{{range .Mounts}}{{if eq .Destination "/var/lib/procfleet"}}{{.Name}}{{end}}{{end}}' "$master")
        if [ -n "$state" ] && ! grep -qxF "$state" <<<"$volumes_before"; then down_args+=(-v); fi ;;
    *) say "the batch is unfinished: the same command again ('make up', 'make run') resumes it from" \
           "the journal; 'scripts/down.sh -v' discards it" ;;
esac
if ! with_any_key compose down "${down_args[@]}" >/dev/null 2>&1; then
    say "could not remove the containers: run 'make down'"
fi
# Last, so that it is what the user sees: the master's own one-line error when it failed.
if [ -n "$MASTER_SAID" ]; then
    say "the master failed (exit $code): $MASTER_SAID"
else
    say "master exited $code"
fi
exit "$code"
