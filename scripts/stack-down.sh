#!/usr/bin/env bash
# Removes the stack $PROCFLEET_STACK (default procfleet) and waits (at most 60 s) until its
# containers are gone; -v also removes its volume (journal and results). The key's secret stays,
# as .env does.
#
# Usage: scripts/stack-down.sh [-v]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

stack=${PROCFLEET_STACK:-procfleet}
docker stack rm "$stack"
label=com.docker.stack.namespace=$stack
deadline=$((SECONDS + 60))
while [ -n "$(docker ps -aq --filter "label=$label")" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        say "stack $stack still has containers after 60s: docker ps -a --filter label=$label"
        exit 1
    fi
    sleep 1
done
if [ "${1:-}" = -v ]; then
    # a volume may stay busy for a moment after its container went
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        volumes=$(docker volume ls -q --filter "label=$label")
        [ -z "$volumes" ] && break
        # shellcheck disable=SC2086  # one name per word
        docker volume rm $volumes >/dev/null 2>&1 || sleep 1
    done
fi
say "removed stack $stack"
