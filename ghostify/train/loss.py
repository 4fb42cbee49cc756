"""The distillation loss and the optional per-layer feature term.

Loss: ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE``
(the label term only where labels exist), plus, with ``feature_weight`` > 0, a feature term: at
every converted layer the Ghost module's output is pulled towards the output of the convolution
it replaced (mean squared error over the teacher map's variance, averaged over layers): the
error transfer init fits layer by layer, kept in view while the whole network trains (off by
default; it did not help on the Fashion-MNIST bench).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ghostify.errors import GhostifyError
from ghostify.plan import get_plan

__all__ = ["distill_loss", "FeatureTaps", "feature_taps"]


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                 temperature: float, alpha: float) -> tuple[torch.Tensor, float, float]:
    """(total, kd, ce): Hinton's KD (scaled by T^2) plus cross-entropy on labelled samples."""
    t = temperature
    kd = F.kl_div(F.log_softmax(student_logits.float() / t, dim=1), F.log_softmax(teacher_logits.float() / t, dim=1),
                  reduction="batchmean", log_target=True) * (t * t)
    ce_value = 0.0
    total = kd
    if labels is not None and alpha < 1.0:
        mask = labels >= 0
        if bool(mask.any()):
            ce = F.cross_entropy(student_logits.float()[mask], labels[mask])
            ce_value = float(ce.detach())
            total = alpha * kd + (1.0 - alpha) * ce
    return total, float(kd.detach()), ce_value


def _keep(store: dict[str, torch.Tensor], name: str, _mod: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
    """A forward hook (with ``store`` and ``name`` bound): remember the module's output."""
    store[name] = out


class FeatureTaps:
    """Forward hooks that keep the outputs of same-named modules in the student and the teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module, names: list[str]) -> None:
        s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
        missing = [n for n in names if n not in s_mods or n not in t_mods]
        if missing:
            raise GhostifyError(f"feature distillation: no module named {missing[0]!r} in both student and teacher",
                                param="feature_layers")
        self.names = names
        self.student: dict[str, torch.Tensor] = {}
        self.teacher: dict[str, torch.Tensor] = {}
        self.handles = [s_mods[n].register_forward_hook(partial(_keep, self.student, n)) for n in names]
        self.handles += [t_mods[n].register_forward_hook(partial(_keep, self.teacher, n)) for n in names]

    def loss(self) -> torch.Tensor:
        """Mean over layers of MSE(student map, teacher map) / var(teacher map)."""
        terms = []
        for n in self.names:
            s_out, t_out = self.student.get(n), self.teacher.get(n)
            if s_out is None or t_out is None or s_out.shape != t_out.shape:
                raise GhostifyError(f"feature distillation: layer {n!r} gave no output or a different shape",
                                    param="feature_layers")
            t_out = t_out.float()
            terms.append(F.mse_loss(s_out.float(), t_out) / t_out.var().clamp_min(1e-8))
        self.student.clear()
        self.teacher.clear()
        return torch.stack(terms).mean()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def feature_taps(student: nn.Module, teacher: nn.Module, weight: float,
                 layers: list[str] | None) -> FeatureTaps | None:
    """The taps of the feature term (None when ``weight`` is 0); ``layers`` default: the plan's converted ones."""
    if weight <= 0:
        return None
    names = layers
    if names is None:
        plan = get_plan(student)
        names = [layer.name for layer in plan.converted] if plan is not None else []
    if not names:
        raise GhostifyError("feature distillation needs converted layers (a ghostify model) or feature_layers",
                            param="feature_layers")
    return FeatureTaps(student, teacher, list(names))
