"""Shared test settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread per test: on 2 shared cores, torch's threads only fight each other
    (a transfer test ran 5x slower with the default), and results do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def importable_module(tmp_path_factory: pytest.TempPathFactory, name: str, source: str):
    """Write ``source`` as module ``name`` in a fresh directory on sys.path; yield the directory.

    For model specs like ``name:factory`` that the CLI imports by name.
    """
    import sys

    d = tmp_path_factory.mktemp(name)
    (d / f"{name}.py").write_text(source)
    sys.path.insert(0, str(d))
    try:
        yield d
    finally:
        sys.path.remove(str(d))
