"""Print the third-party requirements of procfleet distributions, one per line.

Reads each given pyproject.toml: its build requirements and its dependencies, minus our own
procfleet-* distributions. Used on the host (scripts/wheels.sh) and inside the image builds, so the
list of what an image installs lives only in the pyproject files.

    python3 scripts/requirements.py shared/pyproject.toml master/pyproject.toml
"""

import re
import sys
import tomllib


def requirements(paths: list[str]) -> list[str]:
    found: list[str] = []
    for path in paths:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        found += data.get("build-system", {}).get("requires", [])
        found += data.get("project", {}).get("dependencies", [])
    own = re.compile(r"^procfleet-[a-z]+\b", re.IGNORECASE)
    return list(dict.fromkeys(r for r in found if not own.match(r)))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} PYPROJECT.toml...")
    print("\n".join(requirements(sys.argv[1:])))
