"""fer_cli's version: one place, read by the build (pyproject's hatch version) and by every module that records it."""

__version__ = "0.1.0"
