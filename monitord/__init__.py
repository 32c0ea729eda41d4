"""monitord: libvirt's audit trail as guest state, Prometheus metrics and alerts."""

# The package's version (pyproject.toml reads it from here).
__version__ = "0.1.0"

__all__ = ["__version__"]
