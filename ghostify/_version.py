"""The package version (one place; the archive and ``--version`` read it)."""

__version__ = "0.1.0"
