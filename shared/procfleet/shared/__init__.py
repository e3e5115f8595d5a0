"""procfleet's shared package: the contract between master and worker images."""

__version__ = "0.1.0"
