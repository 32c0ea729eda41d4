"""monitord: libvirt's audit trail as guest state, Prometheus metrics and alerts."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("monitord")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
