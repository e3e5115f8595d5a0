"""Separate hosts on one machine: network namespaces joined by veth pairs, and faults on the links.

A `Testbed` puts the master in a namespace of its own and each worker in another, joined to the
master's by a veth pair with a /30 of 10.231.0.0/16 that exists only inside these namespaces:
nothing is routed to or from the host. Its links are cut and restored, lose one direction or a
share of their packets (iptables inside the worker's namespace, since this kernel has no netem),
and `close()` removes everything it made, killing whatever still runs inside first.
"""

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procs import unavailable

#: every namespace made here is named PREFIX-<pytest's pid>-<serial>-<role>
PREFIX = "pfnetns"
#: one `ip`/`iptables` command may take this long
CMD_TIMEOUT = 10.0
#: close() waits this long for the processes in a namespace to die after SIGKILL
KILL_TIMEOUT = 5.0
#: a restored link must report carrier on both ends within this long
CARRIER_TIMEOUT = 5.0
POLL = 0.02

#: a packet's direction on a link, for `Link.drop`
TO_WORKER = "master->worker"
TO_MASTER = "worker->master"

_serial = 0


class CommandFailed(RuntimeError):
    pass


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one short command (bounded by CMD_TIMEOUT); raise with its stderr if it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT)
    if check and proc.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def in_netns(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", netns, *argv, check=check)


def list_netns() -> list[str]:
    return [line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines()
            if line.strip()]


def remove_netns(netns: str) -> None:
    """SIGKILL every process inside `netns`, wait (bounded) until none is left, delete it."""
    deadline = time.monotonic() + KILL_TIMEOUT
    while True:
        pids = [int(p) for p in run("ip", "netns", "pids", netns, check=False).stdout.split()]
        if not pids:
            break
        if time.monotonic() >= deadline:
            raise CommandFailed(f"processes {pids} in namespace {netns} survived SIGKILL for "
                                f"{KILL_TIMEOUT} s")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(POLL)
    run("ip", "netns", "delete", netns)


def sweep_stale() -> list[str]:
    """Remove namespaces left by a test run that was itself killed (its pid is gone)."""
    removed = []
    for name in list_netns():
        m = re.fullmatch(rf"{PREFIX}-(\d+)-\d+-\w+", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            remove_netns(name)
            removed.append(name)
    return removed


@functools.cache
def unusable(iptables: bool) -> str | None:
    """Why namespaces (and iptables inside one, if asked) cannot be used here; None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if iptables and shutil.which("iptables") is None:
        return "`iptables` is not installed"
    probe = f"{PREFIX}-{os.getpid()}-0-probe"
    try:
        sweep_stale()
        run("ip", "netns", "add", probe)
        try:
            run("ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
            if iptables:
                in_netns(probe, "iptables", "-w", "-A", "INPUT", "-i", "p0", "-m", "statistic",
                         "--mode", "random", "--probability", "0.5", "-j", "DROP")
        finally:
            remove_netns(probe)
    except (CommandFailed, OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None


def require(iptables: bool = False) -> None:
    """Skip the test when namespaces are unusable here; fail it instead in CI (CI is set)."""
    reason = unusable(iptables)
    if reason is None:
        return
    unavailable(f"network namespaces are not usable here: {reason}")


class Link:
    """The veth pair between the master's namespace and worker `index`'s, and its faults.

    A cut takes the master's end down: the worker's end loses carrier, and both sides see
    silence (no error), as hosts do when the network between them fails. Drops and loss are
    iptables rules in the worker's namespace, matching only this link's two addresses.
    """

    MASTER_IF_FORMAT = "to-w{}"
    WORKER_IF = "to-master"

    def __init__(self, index: int, master_ns: str, worker_ns: str) -> None:
        if not 0 <= index < 256:
            raise ValueError("at most 256 links")
        self.index = index
        self.master_ns, self.worker_ns = master_ns, worker_ns
        self.master_if = self.MASTER_IF_FORMAT.format(index)
        self.master_ip = f"10.231.{index}.1"
        self.worker_ip = f"10.231.{index}.2"

    def create(self) -> None:
        run("ip", "-n", self.master_ns, "link", "add", self.master_if, "type", "veth",
            "peer", "name", self.WORKER_IF, "netns", self.worker_ns)
        run("ip", "-n", self.master_ns, "addr", "add", f"{self.master_ip}/30",
            "dev", self.master_if)
        run("ip", "-n", self.worker_ns, "addr", "add", f"{self.worker_ip}/30",
            "dev", self.WORKER_IF)
        run("ip", "-n", self.worker_ns, "link", "set", "dev", self.WORKER_IF, "up")
        self.restore()

    def cut(self) -> None:
        run("ip", "-n", self.master_ns, "link", "set", "dev", self.master_if, "down")

    def restore(self) -> None:
        """Bring the master's end up and wait until both ends have carrier."""
        run("ip", "-n", self.master_ns, "link", "set", "dev", self.master_if, "up")
        deadline = time.monotonic() + CARRIER_TIMEOUT
        while not (self._up(self.master_ns, self.master_if)
                   and self._up(self.worker_ns, self.WORKER_IF)):
            if time.monotonic() >= deadline:
                raise CommandFailed(f"link {self.index} has no carrier {CARRIER_TIMEOUT} s "
                                    "after it was brought up")
            time.sleep(POLL)

    @staticmethod
    def _up(netns: str, dev: str) -> bool:
        flags = run("ip", "-n", netns, "-o", "link", "show", "dev", dev).stdout
        return "LOWER_UP" in flags and "NO-CARRIER" not in flags

    def _iptables(self, *rule: str) -> None:
        in_netns(self.worker_ns, "iptables", "-w", *rule)

    def _rules(self, direction: str) -> tuple[str, ...]:
        if direction == TO_WORKER:
            return ("INPUT", "-i", self.WORKER_IF, "-s", self.master_ip, "-d", self.worker_ip)
        if direction == TO_MASTER:
            return ("OUTPUT", "-o", self.WORKER_IF, "-s", self.worker_ip, "-d", self.master_ip)
        raise ValueError(f"direction is {TO_WORKER!r} or {TO_MASTER!r}, not {direction!r}")

    def drop(self, direction: str) -> None:
        """Drop every packet going one way (a one-way partition) until `heal()`."""
        self._iptables("-A", *self._rules(direction), "-j", "DROP")

    def lose(self, probability: float) -> None:
        """Drop each packet, both ways, with `probability`, until `heal()`."""
        for direction in (TO_WORKER, TO_MASTER):
            self._iptables("-A", *self._rules(direction), "-m", "statistic", "--mode",
                           "random", "--probability", f"{probability:.4f}", "-j", "DROP")

    def dropped(self) -> int:
        """Packets the drop rules on this link have dropped so far."""
        total = 0
        for chain in ("INPUT", "OUTPUT"):
            out = in_netns(self.worker_ns, "iptables", "-w", "-n", "-v", "-x", "-L", chain).stdout
            total += sum(int(line.split()[0]) for line in out.splitlines()[2:]
                         if line.split()[2:3] == ["DROP"])
        return total

    def throttle(self, rate: str, latency: str) -> None:
        """A slow link both ways: a token bucket (tc tbf) at `rate`, queueing packets for up to
        `latency` before dropping them. This kernel has no netem, so queueing is how a test
        gets delay; `unthrottle()` removes it."""
        for netns, dev in ((self.master_ns, self.master_if), (self.worker_ns, self.WORKER_IF)):
            run("tc", "-n", netns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                "burst", "8kb", "latency", latency)

    def unthrottle(self) -> None:
        for netns, dev in ((self.master_ns, self.master_if), (self.worker_ns, self.WORKER_IF)):
            run("tc", "-n", netns, "qdisc", "del", "dev", dev, "root")

    def heal(self) -> int:
        """Remove every drop rule on this link; return how many packets they dropped."""
        dropped = self.dropped()
        for chain in ("INPUT", "OUTPUT"):
            self._iptables("-F", chain)
        return dropped


class Testbed:
    """A master's namespace and `workers` worker namespaces, each joined to the master's."""

    def __init__(self, workers: int) -> None:
        global _serial
        _serial += 1
        stem = f"{PREFIX}-{os.getpid()}-{_serial}"
        self.master_ns = f"{stem}-m"
        self.namespaces: list[str] = []
        self.links: list[Link] = []
        self.bin = Path(tempfile.mkdtemp(prefix=f"{stem}-"))
        try:
            self._add_namespace(self.master_ns)
            for i in range(workers):
                worker_ns = f"{stem}-w{i}"
                self._add_namespace(worker_ns)
                link = Link(i, self.master_ns, worker_ns)
                self.links.append(link)
                link.create()
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "dev", "lo", "up")

    def python(self, netns: str) -> str:
        """An executable that runs this venv's Python inside `netns`, for Proc's `python=`.

        `ip netns exec` and the script both exec, so the Proc's pid is Python's own and
        signals reach it directly.
        """
        path = self.bin / f"python-{netns}"
        if not path.exists():
            path.write_text(f"#!/bin/sh\nexec ip netns exec {netns} {sys.executable} \"$@\"\n")
            path.chmod(0o755)
        return str(path)

    def close(self) -> None:
        """Kill what runs inside, delete the namespaces (and so the veths); check none is left.

        Safe to call again; raises if anything could not be removed.
        """
        errors = []
        for name in reversed(self.namespaces):
            try:
                remove_netns(name)
            except (CommandFailed, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
        left = set(self.namespaces) & set(list_netns())
        self.namespaces = sorted(left)
        shutil.rmtree(self.bin, ignore_errors=True)
        if left or errors:
            raise AssertionError(f"namespaces left behind: {sorted(left)}; {errors}")
