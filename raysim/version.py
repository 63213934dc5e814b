"""raysim's version (one place: the package, the manifest)."""

__version__ = "0.1.0"
