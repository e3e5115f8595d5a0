"""The recipe's worker-side work (its task_worker.py loop body), as a module the workers import:
`procfleet worker --import blog_tasks`, or FleetExecutor(imports=["blog_tasks"])."""

import time


def square_text(n, seconds=1.0):
    """The recipe's result for task `n`: the text "n*n=<n*n>", after sleeping `seconds` as its
    worker did (1 s) to stand for real work."""
    time.sleep(seconds)
    return f"{n}*{n}={n * n}"
