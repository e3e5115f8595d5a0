"""procfleet's master: batches (`procfleet master`), a service (`--serve`), its clients
(`procfleet submit`) and FleetExecutor."""


def __getattr__(name):
    # FleetExecutor loads the service's modules: only when asked for, not for every CLI start
    if name == "FleetExecutor":
        from .executor import FleetExecutor
        return FleetExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
