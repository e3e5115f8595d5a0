#!/usr/bin/env bash
# One job for the service-mode cluster (scripts/serve.sh): `procfleet submit` in a one-off
# container of docker-compose.serve.yml's `submit` service, on the cluster's network, with the
# task file on its stdin and its result lines on its stdout, written to RESULTS on this host.
# No bind mount and no `docker cp`, so the files' owners and modes never matter to the
# container's uid 10001.
# Progress and the closing `submit: summary: {...}` line go to stderr. Exits with submit's code:
# 0 all ok, 1 some failed, 2 bad input (nothing sent), 3 unfinished (or no cluster running).
#
# Usage: scripts/submit.sh TASKS [RESULTS] [-- SUBMIT_OPTIONS...]
#   TASKS    a JSON Lines task file, or - for this script's stdin
#   RESULTS  default TASKS.results.jsonl (stdout when TASKS is -); - for stdout. It is written
#            as results arrive, in RESULTS.partial, renamed when submit ends; a job refused
#            before anything was sent leaves an older RESULTS as it was.
#   e.g. scripts/submit.sh tasks.jsonl -- --timeout 600 --retries 2
set -uo pipefail
here=$PWD    # TASKS and RESULTS are the caller's paths
cd "$(dirname "$0")/.." || exit 2
. scripts/lib.sh

usage() { say "usage: scripts/submit.sh TASKS [RESULTS] [-- SUBMIT_OPTIONS...] (make submit TASKS=FILE)"; exit 2; }

if [ $# -lt 1 ] || [ -z "$1" ] || [ "$1" = -- ]; then usage; fi
tasks=$1 shown=$1; shift
results=
if [ $# -ge 1 ] && [ "$1" != -- ]; then results=$1; shift; fi
if [ $# -ge 1 ]; then [ "$1" = -- ] || usage; shift; fi
if [ "$tasks" = - ]; then
    results=${results:--}
else
    case "$tasks" in /*) ;; *) tasks=$here/$tasks ;; esac
    results=${results:-$tasks.results.jsonl}
    if [ ! -f "$tasks" ] || [ ! -r "$tasks" ]; then
        say "cannot read the task file $shown"
        exit 2
    fi
    exec <"$tasks"
fi
case "$results" in -|/*) ;; *) results=$here/$results ;; esac

# `run` would create the network by itself and leave submit waiting for nobody.
project=$(serve_project)
master=$(with_any_key compose_serve ps -q master 2>/dev/null | head -n 1)
if [ -z "$master" ] || [ "$(docker inspect -f '{{.State.Running}}' "$master" 2>/dev/null)" != true ]; then
    say "no service-mode cluster is running (compose project $project): start one with 'make serve'"
    exit 3
fi

# The task file reaches the container on stdin (nothing is mounted or copied in) and is
# written whole to SPOOL there before `submit SPOOL` starts, so submit checks the whole file
# before it sends anything: given `-`, submit streams and a bad line stops the job midway.
# TASKS=- is that stream. SPOOL keeps the file's own name, which the master's log gives the
# job. submit's messages name SPOOL or <stdin>: name_file gives them the caller's name instead.
# It runs in the pipeline's own subshell and ignores Ctrl-C, so it passes on submit's last
# lines after one.
base=${shown##*/}
SPOOL=/tmp/$(printf '%s' "${base:-tasks.jsonl}" | tr -c 'A-Za-z0-9._-' _)
name_file() {
    trap '' INT TERM
    if [ "$shown" = - ]; then exec grep -v -x '[0-9][0-9]*'; fi
    # A line that is a bare number is docker-compose 1.29's own echo of a non-zero exit code.
    NAME=$shown SPOOL=$SPOOL awk '/^[0-9]+$/ { next } {
        out = ""
        while (1) {
            i = index($0, ENVIRON["SPOOL"]); n = length(ENVIRON["SPOOL"])
            j = index($0, "<stdin>")
            if (j && (!i || j < i)) { i = j; n = 7 }
            if (!i) break
            out = out substr($0, 1, i - 1) ENVIRON["NAME"]; $0 = substr($0, i + n)
        }
        print out $0; fflush() }'
}
if [ "$tasks" = - ]; then
    job() { compose_serve run --rm -T --no-deps submit submit --results - "$@" -; }
else
    # shellcheck disable=SC2016  # $0 and $@ are the container shell's
    job() { compose_serve run --rm -T --no-deps --entrypoint sh submit \
                -c 'cat >"$0" && exec procfleet submit --results - "$@" "$0"' "$SPOOL" "$@"; }
fi

# Ctrl-C reaches submit in its container too (it ends the job unfinished, exit 3); a handler
# (not an ignore, which compose would inherit) keeps this shell alive to keep what arrived.
trap : INT TERM

# submit's stdout to fd 3 (the results), its stderr through name_file
if [ "$results" = - ]; then
    { job "$@" 2>&1 1>&3 3>&- | name_file >&2; } 3>&1
    exit "${PIPESTATUS[0]}"
fi
partial=$results.partial
{ job "$@" 2>&1 1>&3 3>&- | name_file >&2; } 3>"$partial"
code=${PIPESTATUS[0]}
if [ "$code" = 2 ] && [ ! -s "$partial" ]; then
    rm -f "$partial"
    say "nothing was sent (exit 2)"
else
    mv -f "$partial" "$results"
    say "results: $results ($(wc -l <"$results") lines); submit exited $code"
fi
exit "$code"
