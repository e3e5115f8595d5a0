"""What the report says about the run: the machine, the code measured, the command, the load."""

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

from . import compose

REPO = Path(__file__).resolve().parent.parent


def machine_info(plan, argv: list[str], executable: str) -> dict[str, str]:
    cpu = "unknown"
    mem = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
        mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo")
                      if line.startswith("MemTotal"))
        mem = f"{mem_kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "`" + " ".join(["python -m bench", *map(shlex.quote, argv)]) + "`",
        "plan": f"{plan.name}: {plan.runs} run(s) per case, {plan.tasks:,} tiny "
                f"tasks ({plan.percall_tasks:,} for the per-call recipe)",
        "CPU": f"{cpu}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable)",
        "memory": mem,
        "OS": platform.platform(),
        "Python (suite and baselines)": platform.python_version(),
        "procfleet": procfleet_version(executable),
        "tree": git_describe(),
        "Docker": docker_version(),
        "load average at start": load_average(),
    }


def procfleet_version(executable: str) -> str:
    try:
        with open(executable, "rb") as fh:
            first = fh.readline().decode(errors="replace")
        python = first[2:].strip() if first.startswith("#!") else sys.executable
        out = subprocess.run(
            [python, "-c", "import platform, importlib.metadata as m; "
             "print(m.version('procfleet-master'), 'on Python', platform.python_version())"],
            capture_output=True, text=True, timeout=30)
        version = out.stdout.strip() or "version unknown"
    except (OSError, subprocess.SubprocessError):
        version = "version unknown"
    try:
        shown = os.path.relpath(executable, REPO)
        shown = executable if shown.startswith("..") else shown
    except ValueError:
        shown = executable
    return f"`{shown}` ({version})"


def git_describe() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        branch = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--abbrev-ref", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return "not git"
        return f"{branch.stdout.strip()} at {out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        return "not git"


def docker_version() -> str:
    try:
        out = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                             capture_output=True, text=True, timeout=20)
        engine = out.stdout.strip() if out.returncode == 0 else "engine not usable"
    except (OSError, subprocess.SubprocessError):
        return "not installed"
    cmd = compose.compose_command()
    return f"engine {engine}; compose: `{' '.join(cmd)}`" if cmd else f"engine {engine}; no compose"


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"
