"""Which convolutions become Ghost modules, and with which ratio s and cheap kernel d.

Read like ``torch.ao.quantization.QConfigMapping``: one config object with a global setting
(``s``, ``d``), include/exclude globs and per-name overrides; every layer the policy leaves
alone gets a reason in words.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any

from ghostify.errors import GhostifyError
from ghostify.layers.ghost import intrinsic_channels, validate_ratio_and_kernel

__all__ = ["GhostConfig", "LayerDecision", "theoretical_speedup", "theoretical_compression"]


def theoretical_speedup(c: int, k: tuple[int, int], s: int, d: int, groups: int = 1) -> float:
    """Eq. 4, exact: (c k k) / (c k k / s + (s - 1) / s d d), with c the inputs one filter reads.

    For a grouped convolution a filter reads c / groups channels, so c is divided by groups.
    """
    ckk = (c / groups) * k[0] * k[1]
    return ckk / (ckk / s + (s - 1) / s * d * d)


def theoretical_compression(c: int, k: tuple[int, int], s: int, d: int, groups: int = 1) -> float:
    """Eq. 5, exact: the same ratio over weights (the paper states both are equal)."""
    return theoretical_speedup(c, k, s, d, groups)


@dataclass
class LayerDecision:
    """What the policy says about one convolution."""

    name: str
    convert: bool
    s: int
    d: int
    reason: str | None = None


@dataclass
class GhostConfig:
    """The conversion policy.

    Args:
        s: global ratio s (1/s of each layer's maps are intrinsic).
        d: global cheap kernel d (depthwise d x d).
        include: qualified-name globs a convolution must match to be converted (default: all).
        exclude: qualified-name globs never converted (wins over include).
        overrides: ``{glob: {"s": .., "d": ..}}``; later entries win, like QConfigMapping.
        keep_stem: leave the convolution that reads the input image alone (the paper's
            practice: its c=3 input makes Eq. 4's speed-up small and the layer is cheap).
        keep_depthwise: leave depthwise convolutions alone: they already cost what a ghost costs.
        fuse: fold a following BatchNorm and activation into the Ghost module (paper form).
    """

    s: int = 2
    d: int = 3
    include: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    overrides: dict[str, dict[str, int]] = field(default_factory=dict)
    keep_stem: bool = True
    keep_depthwise: bool = True
    fuse: bool = True

    def __post_init__(self) -> None:
        self.s, self.d = validate_ratio_and_kernel(self.s, self.d)
        self.include = list(self.include) or ["*"]
        self.exclude = list(self.exclude)
        for glob, setting in self.overrides.items():
            unknown = set(setting) - {"s", "d"}
            if unknown:
                raise GhostifyError(f"override {glob!r}: unknown keys {sorted(unknown)} (use s and d)")
            validate_ratio_and_kernel(setting.get("s", self.s), setting.get("d", self.d))

    # -- QConfigMapping-style builders -------------------------------------------------------
    def set_global(self, s: int, d: int) -> GhostConfig:
        self.s, self.d = validate_ratio_and_kernel(s, d)
        return self

    def set_module_name(self, glob: str, s: int | None = None, d: int | None = None) -> GhostConfig:
        """Override s and/or d for convolutions whose qualified name matches ``glob``."""
        setting = {k: v for k, v in (("s", s), ("d", d)) if v is not None}
        validate_ratio_and_kernel(setting.get("s", self.s), setting.get("d", self.d))
        self.overrides[glob] = setting
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GhostConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise GhostifyError(f"unknown GhostConfig keys: {sorted(unknown)}")
        return cls(**data)

    # -- the decision ------------------------------------------------------------------------
    def decide(
        self,
        name: str,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        groups: int,
        is_stem: bool = False,
    ) -> LayerDecision:
        """Decide one convolution. Order: exclude, include, depthwise, stem, override, payoff."""
        s, d = self.s, self.d
        for glob in self.exclude:
            if fnmatch.fnmatchcase(name, glob):
                return LayerDecision(name, False, s, d, f"excluded by pattern {glob!r}")
        if not any(fnmatch.fnmatchcase(name, glob) for glob in self.include):
            return LayerDecision(name, False, s, d, "not matched by any include pattern")
        if self.keep_depthwise and groups > 1 and groups == in_channels:
            return LayerDecision(name, False, s, d, "depthwise convolution: already as cheap as a ghost")
        if self.keep_stem and is_stem:
            reason = "stem reading the input image (kept by default, as in the authors' code)"
            return LayerDecision(name, False, s, d, reason)
        for glob, setting in self.overrides.items():
            if fnmatch.fnmatchcase(name, glob):
                s, d = setting.get("s", s), setting.get("d", d)
        if s == 1:
            return LayerDecision(name, False, s, d, "s=1: a Ghost module would be the convolution itself")
        if intrinsic_channels(out_channels, s, groups) >= out_channels:
            return LayerDecision(name, False, s, d, f"n={out_channels} too small for s={s}: no maps to save")
        r_s = theoretical_speedup(in_channels, kernel_size, s, d, groups)
        if r_s <= 1.0:
            return LayerDecision(name, False, s, d, f"Eq. 4 predicts no gain (r_s={r_s:.2f} <= 1)")
        return LayerDecision(name, True, s, d)
