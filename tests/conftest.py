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


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty caches and no network: TORCH_HOME and the Hugging Face cache point into tmp_path, and
    any download torch hub, urllib or huggingface_hub would start fails the test at once (so a
    test that reaches for the network cannot hang). Yields the torch hub checkpoints directory."""
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args[:1]}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    yield tmp_path / "torch" / "hub" / "checkpoints"
