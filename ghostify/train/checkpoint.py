"""Checkpoints: everything an exact resume needs, written atomically by rank 0.

A checkpoint (after every epoch, every ``checkpoint_every`` steps, and when interrupted) holds
model, optimizer, scheduler, scaler, RNG states and the position in the run (the epoch, the
steps done in it, the global step), so ``resume`` continues exactly where the run stopped. It
holds tensors and plain data only and is read back with ``weights_only``.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ghostify.errors import GhostifyError
from ghostify.train.config import FinetuneConfig
from ghostify.train.distributed import DistContext
from ghostify.train.optim import Optimization
from ghostify.utils import atomic_write, first_line

__all__ = ["CHECKPOINT_FORMAT", "Position", "Checkpointer", "load_checkpoint", "save_checkpoint", "rng_state",
           "set_rng_state"]

CHECKPOINT_FORMAT = "ghostify.finetune-checkpoint/1"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch colours some of its load errors


@dataclass
class Position:
    """Where a run stands: what a checkpoint records and ``resume`` continues from."""

    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # optimizer steps done in the current epoch (its batches to skip on resume)
    global_step: int = 0


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """``torch.save`` to memory, then an atomic write: an interrupted save keeps the previous checkpoint."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A finetune checkpoint (tensors and plain data only: loaded with weights_only)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = _ANSI.sub("", first_line(exc, 1000))[:200]
        raise GhostifyError(f"{path}: not a readable finetune checkpoint ({first})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise GhostifyError(f"{path}: not a ghostify finetune checkpoint")
    return payload


class Checkpointer:
    """Saves (rank 0 only) and restores one run's checkpoint at ``path`` (None: no checkpoints)."""

    def __init__(self, path: str | os.PathLike | None, student: nn.Module, optim: Optimization,
                 cfg: FinetuneConfig, total: int, ctx: DistContext) -> None:
        self.path = Path(path) if path is not None else None
        self.student, self.optim, self.cfg, self.total, self.ctx = student, optim, cfg, total, ctx

    def save(self, position: Position, history: list[dict[str, Any]]) -> None:
        if self.path is None or not self.ctx.is_main:
            return
        save_checkpoint(self.path, {
            "format": CHECKPOINT_FORMAT, "model": self.student.state_dict(), **self.optim.state_dict(),
            "rng": rng_state(self.ctx.device), "epoch": position.epoch, "step_in_epoch": position.step_in_epoch,
            "global_step": position.global_step, "total_steps": self.total, "config": asdict(self.cfg),
            "history": history})

    def restore(self) -> tuple[Position, list[dict[str, Any]]]:
        """Load the checkpoint into the student, the optimizer and the RNG; the position and the history."""
        if self.path is None or not self.path.exists():
            raise GhostifyError(f"resume: no checkpoint at {self.path}", param="resume")
        payload = load_checkpoint(self.path)
        try:
            self.student.load_state_dict(payload["model"])
        except RuntimeError as exc:
            raise GhostifyError(f"{self.path}: checkpoint does not fit this model ({first_line(exc)})") from None
        self.optim.load_state_dict(payload)
        set_rng_state(payload["rng"], self.ctx.device)
        position = Position(payload["epoch"], payload["step_in_epoch"], payload["global_step"])
        if payload.get("total_steps") != self.total:
            raise GhostifyError(f"{self.path}: the checkpoint is for a {payload.get('total_steps')}-step run; "
                                f"these settings give {self.total} steps (use the same epochs, max steps and "
                                "batch size)")
        return position, list(payload.get("history", []))
