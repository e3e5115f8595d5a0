# procfleet's two images from one build definition: the `base` stage holds what both carry (Python
# venv, user, the third-party dependencies, the shared package's source); the `master` and
# `worker` stages each install their own side, so neither image holds the other's code.
# Build from the repo root:
#     docker build --target master -t procfleet-master .
#     docker build --target worker -t procfleet-worker .
# (`make images` builds both through docker-compose.yml, offline). The key is never part of an
# image: give PROCFLEET_AUTHKEY or PROCFLEET_AUTHKEY_FILE at run time.
ARG BASE_IMAGE=python:3.12.8-slim-bookworm

FROM ${BASE_IMAGE} AS base

ENV PYTHONUNBUFFERED=1 \
    PATH=/opt/procfleet/bin:$PATH

RUN python3 -m venv /opt/procfleet \
    && groupadd --gid 10001 procfleet \
    && useradd --uid 10001 --gid procfleet --no-create-home --no-log-init --home-dir /app --shell /usr/sbin/nologin procfleet

# Third-party dependencies before our code, so that changing our code reuses these layers: those
# of all three pyprojects, installed here once for both images (only pyproject.toml files are
# copied for that, no code of either side). build/wheels/ is filled by `make wheels`: with
# wheels there the install is offline, else it uses the index.
COPY scripts/requirements.py scripts/image-install.sh /tmp/procfleet/
COPY build/wheels/ /tmp/procfleet/wheels/
COPY shared/pyproject.toml /tmp/procfleet/shared/
COPY master/pyproject.toml /tmp/procfleet/master/
COPY worker/pyproject.toml /tmp/procfleet/worker/
RUN sh /tmp/procfleet/image-install.sh deps shared/pyproject.toml master/pyproject.toml \
    worker/pyproject.toml
# The shared package, which both sides install with their own (image-install.sh code).
COPY shared/ /tmp/procfleet/shared/

WORKDIR /app
# Python is PID 1 (exec form) and gets SIGTERM directly.
STOPSIGNAL SIGTERM
ENTRYPOINT ["procfleet"]


FROM base AS master

# /var/lib/procfleet: journal and results; a named volume mounted there starts with its owner.
RUN install -d -o procfleet -g procfleet /var/lib/procfleet
COPY master/ /tmp/procfleet/master/
RUN sh /tmp/procfleet/image-install.sh code ./shared ./master

USER procfleet:procfleet
EXPOSE 50000
# A real authenticated round trip. Short interval: workers wait for "healthy" before starting.
HEALTHCHECK --interval=1s --timeout=3s --start-period=30s --retries=30 \
    CMD ["procfleet", "ping", "--master", "127.0.0.1:50000"]
# SIGTERM: the master reports what is finished and exits 3; once the batch is done it exits with
# the batch's code.
CMD ["master"]


FROM base AS worker

COPY worker/ /tmp/procfleet/worker/
RUN sh /tmp/procfleet/image-install.sh code ./shared ./worker

# Your own tasks: derive an image that adds the module and names it in PROCFLEET_IMPORTS
# (the worker imports each listed module, from /app among other places, so its @task functions
# register):
#
#     FROM procfleet-worker:latest
#     COPY mytasks.py /app/
#     # or a package with dependencies: COPY mypkg/ /src/mypkg/ and then
#     # USER root + RUN pip install /src/mypkg + USER procfleet
#     ENV PROCFLEET_IMPORTS=mytasks
#
# and point the compose service's `image:` at it. The master needs no task code: it only hands out
# task names and arguments.
USER procfleet:procfleet
# SIGTERM drains: the worker reports what it finished, hands the rest of its lease back to the
# master and exits 0 (compose allows 15s before SIGKILL).
CMD ["worker"]
