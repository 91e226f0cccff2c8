"""Undertow: reverse ETL that sends every change exactly once."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("undertow")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
