"""pixeldino: map retrogressive thaw slumps (RTS) in Sentinel-2 imagery with semi-supervised PixelDINO."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pixeldino")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
