#!/usr/bin/env bash
# Deploys deploy/stack.yml on this engine's swarm as stack $PROCFLEET_STACK (default procfleet),
# with WORKERS worker replicas and the local images. The key is the Docker secret
# $PROCFLEET_AUTHKEY_SECRET (default procfleet_authkey); when it is missing it is made from
# .env's PROCFLEET_AUTHKEY, so that `procfleet ping`/`submit` from outside can use the same key.
# Other PROCFLEET_* variables (PROCFLEET_DEMO, PROCFLEET_DEMO_SLEEP, ...) pass through to the stack.
#
# Usage: scripts/stack-up.sh [WORKERS]   (default $WORKERS or 4; needs the images and .env: `make stack-up`)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

workers=${1:-${WORKERS:-4}}
stack=${PROCFLEET_STACK:-procfleet}
secret=${PROCFLEET_AUTHKEY_SECRET:-procfleet_authkey}

state=$(docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}')
if [ "$state" != "active true" ]; then
    say "this engine is not a swarm manager (swarm: $state): run 'docker swarm init'" \
        "(one host: 'docker swarm init --advertise-addr 127.0.0.1') and try again"
    exit 2
fi

if ! docker secret inspect "$secret" >/dev/null 2>&1; then
    key=$(sed -n 's/^PROCFLEET_AUTHKEY=//p' .env | tail -n 1)
    [ -n "$key" ] || { say ".env holds no PROCFLEET_AUTHKEY (make .env writes one)"; exit 2; }
    printf %s "$key" | docker secret create "$secret" - >/dev/null
    say "created the Docker secret $secret from .env's PROCFLEET_AUTHKEY"
fi

PROCFLEET_AUTHKEY_SECRET=$secret WORKERS=$workers \
    docker stack deploy --resolve-image never --compose-file deploy/stack.yml "$stack"
say "deployed stack $stack: master + $workers workers. Follow: docker service logs -f ${stack}_master;" \
    "results: docker cp \$(docker ps -aqf label=com.docker.swarm.service.name=${stack}_master" \
    "| head -n 1):/var/lib/procfleet/results.jsonl .; remove: make stack-down"
