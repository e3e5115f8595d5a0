#!/bin/sh
# Runs inside the image builds (Dockerfile), where /tmp/procfleet holds what the build copied in:
# installs into the image's venv (the first pip on PATH).
#
#   image-install.sh deps PYPROJECT...  the third-party requirements of those pyprojects: from
#                                       wheels/ with no index when it holds wheels (make wheels),
#                                       else from the index
#   image-install.sh code DIR...        our distributions in those folders, with no index (their
#                                       requirements are in by now), then removes /tmp/procfleet
set -eu
cd /tmp/procfleet
# Build-time settings only: exported here, they stay out of the images' environment.
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

mode=${1:-}
[ $# -ge 2 ] || { echo "usage: $0 deps PYPROJECT... | code DIR..." >&2; exit 2; }
shift
case $mode in
    deps)
        python3 requirements.py "$@" >requirements.txt
        if ls wheels/*.whl >/dev/null 2>&1; then
            pip install --no-index --find-links=wheels -r requirements.txt
        else
            pip install -r requirements.txt
        fi
        ;;
    code)
        pip install --no-index --no-build-isolation "$@"
        cd /
        rm -rf /tmp/procfleet
        ;;
    *)
        echo "$0: unknown step '$mode' (deps or code)" >&2
        exit 2
        ;;
esac
