"""Per-machine cache of layer timings, in the user's cache directory.

A timing is only worth reusing on the machine that produced it, so the key names what decides a
convolution's speed on onnxruntime's CPU execution provider: the CPU model and its ISA
extensions, the onnxruntime version and the intra-op thread count. Within a machine, a layer's
entry is keyed by its shape (:meth:`ghostify.tune.table.LayerCase.key`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ghostify.runtime.cpu import cpu_info
from ghostify.utils import atomic_write

__all__ = ["cache_dir", "machine_key", "LatencyCache"]

SCHEMA = 1


def cache_dir() -> Path:
    """``$GHOSTIFY_CACHE_DIR``, else ``$XDG_CACHE_HOME/ghostify``, else ``~/.cache/ghostify``."""
    explicit = os.environ.get("GHOSTIFY_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "ghostify"


def machine_key(threads: int, cpu: dict[str, Any] | None = None) -> str:
    """CPU model, architecture, ISA, onnxruntime version and threads, in one string."""
    import onnxruntime as ort

    cpu = cpu_info() if cpu is None else cpu
    isa = ",".join(sorted(cpu.get("isa", [])))
    return f"{cpu.get('model')}|{cpu.get('arch')}|{isa}|onnxruntime {ort.__version__}|threads {threads}"


class LatencyCache:
    """``{machine key: {layer key: {variant: median ms}}}`` in one JSON file, written atomically."""

    def __init__(self, machine: str, directory: Path | None = None) -> None:
        self.machine = machine
        digest = hashlib.sha256(machine.encode()).hexdigest()[:16]
        self.path = (directory or cache_dir()) / f"latency-{digest}.json"
        self._entries: dict[str, dict[str, float]] = self._read()

    def _read(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):  # no cache yet, or a damaged one: measure again
            return {}
        if data.get("schema") != SCHEMA or data.get("machine") != self.machine:
            return {}
        return dict(data.get("layers", {}))

    def get(self, key: str) -> dict[str, float] | None:
        return self._entries.get(key)

    def put(self, key: str, timings: dict[str, float]) -> None:
        self._entries[key] = dict(timings)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"schema": SCHEMA, "machine": self.machine, "layers": self._entries}
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True))
