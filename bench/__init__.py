"""procfleet's benchmark suite: procfleet through its CLI against the blog recipe and Pool.

Run it with `make bench` (or `make bench-quick`); `python -m bench --help` lists the options.
"""
