"""reconciler: converge production deployments of many small projects to desired-state files."""

__version__ = "0.1.0"
