"""One logging set-up for every procfleet process: stderr, a steady prefix per actor."""

import logging
import sys


def configure_logging(verbose: int = 0, actor: str = "procfleet") -> None:
    """Log to stderr as `HH:MM:SS actor: message`; -v for debug."""
    level = logging.DEBUG if verbose > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {actor}: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
