"""Which tpx this is: the installed distribution's version (`tpx --version`, `tpx_build_info`)."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    """The version pip installed; "unknown" when run from a tree that was never installed."""
    try:
        return metadata.version("tpx")
    except metadata.PackageNotFoundError:
        return "unknown"
