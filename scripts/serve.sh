#!/usr/bin/env bash
# Starts the service-mode cluster (docker-compose.serve.yml over docker-compose.yml) detached: a
# master that stays up between jobs and WORKERS workers; returns once the master is healthy and
# every worker has joined it, or fails (exit 1) with the master's last lines. Jobs: scripts/submit.sh.
#
# Usage: scripts/serve.sh [WORKERS]   (default $WORKERS or 4; needs the images and a key: `make serve`)
# PROCFLEET_SERVE_WAIT bounds the wait (seconds, default 120).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
. scripts/lib.sh

workers=${1:-${WORKERS:-4}}
wait_s=${PROCFLEET_SERVE_WAIT:-120}
project=$(serve_project)

master_lines() {
    local master=$1
    say "the master's last lines:"
    docker logs --tail 20 "$master" 2>&1 | sed 's/^/  master | /' >&2
}

# compose waits for the master's health before it starts the workers (depends_on), and fails
# if it turns unhealthy; the bound is for anything else that keeps it waiting.
# shellcheck disable=SC2086  # "docker compose" is two words
timeout "$wait_s" $COMPOSE -p "$project" "${SERVE_FILES[@]}" up -d --scale worker="$workers" master worker
code=$?
if [ "$code" != 0 ]; then
    if [ "$code" = 124 ]; then
        say "compose had not started the cluster (project $project) after ${wait_s}s"
    else
        say "compose could not start the cluster (project $project): exit $code"
    fi
    master=$(compose_serve ps -q master 2>/dev/null | head -n 1)
    [ -n "$master" ] && master_lines "$master"
    say "'make serve-down' removes what was started"
    exit 1
fi

master=$(compose_serve ps -q master | head -n 1)
deadline=$((SECONDS + wait_s))
while :; do
    # "<status> <health> <restarts>" of the master; the workers that are running
    read -r status health restarts < <(docker inspect -f \
        '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.RestartCount}}' \
        "$master" 2>/dev/null)
    running=$(docker ps -q --filter "label=com.docker.compose.project=$project" \
        --filter label=com.docker.compose.service=worker --filter status=running | wc -l)
    # Ready once the workers have joined, not only started: a job submitted before then runs on
    # those that joined first.
    # ping says "master ADDRESS: run, D/T tasks done, N workers, J jobs open" (no other format).
    joined=0
    if [ "$status" = running ] && [ "$health" = healthy ]; then
        joined=$(docker exec "$master" procfleet ping 2>/dev/null | sed -n 's/.*, \([0-9]*\) workers\(,.*\)\{0,1\}$/\1/p')
    fi
    if [ "$running" -eq "$workers" ] && [ "${joined:-0}" -ge "$workers" ]; then
        break
    fi
    if [ "${restarts:-0}" -gt 0 ] || [ "$status" = exited ] || [ "$health" = unhealthy ]; then
        say "the master is not serving (status $status, health $health, restarts $restarts)"
        master_lines "$master"
        say "'make serve-down' removes the cluster"
        exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        say "not ready after ${wait_s}s: master $status/$health, $running of $workers workers" \
            "running, ${joined:-0} joined"
        master_lines "$master"
        exit 1
    fi
    sleep 0.5
done
say "serving: compose project $project, master healthy, $workers workers joined;" \
    "submit jobs with 'make submit TASKS=FILE' (scripts/submit.sh), stop with 'make serve-down'"
