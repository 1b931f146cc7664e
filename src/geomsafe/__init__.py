"""geomsafe: geometry-centric safety for LLM fine-tuning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geomsafe")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
