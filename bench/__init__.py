"""procfleet's benchmark suite: procfleet through its CLI against the blog recipe and Pool.

Run it with `make bench` (or `make bench-quick`); `python -m bench --help` lists the options.
The micro_*.py modules measure one part each (`python -m bench.micro_leases --help`), and
procs.py is the process wrapper the tests use too.
"""
