"""Running tasks: a fixed set of threads, an inbox of leased tasks, an outbox of outcomes."""

import json
import math
import queue
import threading
import traceback

from procfleet.shared.errors import UnknownTask
from procfleet.shared.records import ERROR, OK, Outcome, Task
from procfleet.shared.tasks import TaskRegistry


def run_task(registry: TaskRegistry, task: Task) -> Outcome:
    """Run one task; any failure becomes a failed outcome, never an exception."""
    try:
        func = registry.get(task.name)
    except UnknownTask as exc:
        return Outcome(task.seq, ERROR, None, f"UnknownTask: {exc}")
    try:
        value = func(*task.args, **task.kwargs)
    except (Exception, SystemExit) as exc:
        return Outcome(task.seq, ERROR, None, format_error(exc))
    try:
        return Outcome(task.seq, OK, to_json_value(value), None)
    except (TypeError, ValueError) as exc:
        return Outcome(task.seq, ERROR, None,
                       f"ResultNotJSON: task {task.name!r} returned a value that is not "
                       f"JSON-serialisable: {exc}")


def format_error(exc: BaseException) -> str:
    """`Type: message`, a blank line, then the traceback as the worker saw it."""
    tb = "".join(traceback.format_exception(exc))
    return f"{type(exc).__name__}: {exc}\n\n{tb}"


def to_json_value(value):
    """`value` as it will read back from JSON; ValueError/TypeError if it cannot be JSON."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a JSON number")
        return value
    return json.loads(json.dumps(value, allow_nan=False))


class Executor:
    """`concurrency` daemon threads; results land in `outbox` and set `wakeup`."""

    def __init__(self, registry: TaskRegistry, concurrency: int, wakeup: threading.Event,
                 imports: tuple[str, ...] = ()) -> None:
        self.registry = registry
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.wakeup = wakeup
        for i in range(concurrency):
            threading.Thread(target=self._loop, name=f"task-{i}", daemon=True).start()

    def submit(self, tasks: list[Task]) -> None:
        for task in tasks:
            self.inbox.put(task)

    def collect(self) -> list[Outcome]:
        outcomes = []
        while True:
            try:
                outcomes.append(self.outbox.get_nowait())
            except queue.Empty:
                return outcomes

    def take_unstarted(self) -> list[Task]:
        tasks = []
        while True:
            try:
                tasks.append(self.inbox.get_nowait())
            except queue.Empty:
                return tasks

    def close(self) -> None:
        pass

    def _loop(self) -> None:
        while True:
            task = self.inbox.get()
            self.outbox.put(run_task(self.registry, task))
            self.wakeup.set()
