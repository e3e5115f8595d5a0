"""`python -m procfleet.shared ...`: the `procfleet` command, for child processes.

Local workers start this way, not as `python -m procfleet.shared.cli`: multiprocessing runs the
parent's main module again, by name, in each task process, where `procfleet.shared.cli` is
already imported (the worker's fork server preloads the procfleet modules), so runpy warned
("found in sys.modules ... prior to execution"). It never reruns a package's `__main__`, and
nothing imports this module.
"""

from procfleet.shared.cli import main

main()
