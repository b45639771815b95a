"""attnseg: attention-based segmentation of 2D and 3D medical images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("attnseg")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
