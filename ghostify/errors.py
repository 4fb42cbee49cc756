"""Errors that mean "the user gave us something we cannot use".

The CLI turns a :class:`GhostifyError` into one line on stderr and exit code 2; anything
else is a bug in ghostify and keeps its traceback (or shows it with ``--debug``).
"""

from __future__ import annotations


class GhostifyError(Exception):
    """Bad input: a clear one-line message, exit code 2 in the CLI."""

    exit_code = 2


class UnsafeModelFileError(GhostifyError):
    """A model file references code outside the allow-list; loading it needs ``trust=True``."""


class NothingToConvertError(GhostifyError):
    """The model has no convolution the policy converts (only raised with ``strict=True``)."""
