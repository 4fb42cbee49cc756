"""Which convolutions become Ghost modules, and with which ratio s and cheap kernel d.

Read like ``torch.ao.quantization.QConfigMapping``: one config object carries a global setting
(``s``, ``d``), per-type settings (``set_object_type("Conv1d", s=3)``), per-name settings
(``set_module_name("layer4.*", s=4)``) and include/exclude globs; the most specific wins
(name over type over global). Every layer the policy leaves alone gets a reason in words.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ghostify.errors import GhostifyError, InvalidValueError
from ghostify.layers.ghost import intrinsic_channels, validate_ratio_and_kernel
from ghostify.policy.equations import theoretical_speedup

__all__ = ["GhostConfig", "LayerDecision"]


@dataclass
class LayerDecision:
    """What the policy says about one convolution."""

    name: str
    convert: bool
    s: int
    d: int
    reason: str | None = None


def _check_setting(where: str, setting: dict[str, int], s: int, d: int) -> None:
    unknown = set(setting) - {"s", "d"}
    if unknown:
        raise GhostifyError(f"{where}: unknown keys {sorted(unknown)} (use s and d)")
    validate_ratio_and_kernel(setting.get("s", s), setting.get("d", d))


@dataclass
class GhostConfig:
    """The conversion policy.

    Args:
        s: global ratio s (1/s of each layer's maps are intrinsic).
        d: global cheap kernel d (depthwise d x d, or d / d x d x d for 1-D / 3-D convolutions).
        include: qualified-name globs a convolution must match to be converted (default: all).
        exclude: qualified-name globs never converted (wins over include).
        overrides: per-name settings ``{glob: {"s": .., "d": ..}}``; later entries win, like
            QConfigMapping; an override with ``s=1`` keeps the layer.
        type_overrides: per-type settings ``{"Conv1d": {"s": ..}}`` by class name; a name
            override wins over a type override.
        keep_stem: leave the convolution that reads the input image alone (the paper's
            practice: its c=3 input makes Eq. 4's speed-up small and the layer is cheap).
        keep_depthwise: leave depthwise convolutions alone: they already cost what a ghost costs.
        fuse: fold a following BatchNorm and activation into the Ghost module (paper form).
        latency: ``"measure"`` times every candidate on this machine (onnxruntime CPU, in the
            deployment form, at its real input shape; :mod:`ghostify.tune`) and converts a layer
            only where its Ghost module measures faster; None decides by Eq. 4 alone.
        target_speedup: a whole-model latency budget: choose s per layer among ``s_choices``
            (or keep it) to reach this measured speed-up at the least predicted accuracy cost.
        target_macs: the same budget in MACs (original / Ghost); either target implies
            ``latency="measure"``: a layer that measures slower is never a choice.
        s_choices: the ratios a budget may choose from.
        threads: onnxruntime intra-op threads the timings use (the deployment's).
        min_layer_speedup: a layer converts only above this measured speed-up.
        cache_dir: where the timings are cached (default: :func:`ghostify.tune.cache_dir`).
        kept: layers left alone by name, with the reason (written by the latency pass).
    """

    s: int = 2
    d: int = 3
    include: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    overrides: dict[str, dict[str, int]] = field(default_factory=dict)
    type_overrides: dict[str, dict[str, int]] = field(default_factory=dict)
    keep_stem: bool = True
    keep_depthwise: bool = True
    fuse: bool = True
    latency: str | None = None
    target_speedup: float | None = None
    target_macs: float | None = None
    s_choices: tuple[int, ...] = (2, 3, 4)
    threads: int = 1
    min_layer_speedup: float = 1.0
    cache_dir: str | None = None
    kept: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.s, self.d = validate_ratio_and_kernel(self.s, self.d)
        self._check_latency()
        self.include = list(self.include) or ["*"]
        self.exclude = list(self.exclude)
        for glob, setting in self.overrides.items():
            _check_setting(f"override {glob!r}", setting, self.s, self.d)
        for type_name, setting in self.type_overrides.items():
            _check_setting(f"type override {type_name!r}", setting, self.s, self.d)

    def _check_latency(self) -> None:
        if self.latency not in (None, "measure"):
            raise InvalidValueError("latency", f"must be None or 'measure', got {self.latency!r}")
        if self.target_speedup is not None and self.target_macs is not None:
            raise GhostifyError("give target_speedup or target_macs, not both", param="target_speedup")
        for name in ("target_speedup", "target_macs"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 1.0 <= value < 1e6):
                raise InvalidValueError(name, f"must be a number >= 1, got {value!r}")
        if self.budgeted:
            self.latency = "measure"
        self.s_choices = tuple(sorted({int(v) for v in self.s_choices}))
        for s in self.s_choices:
            validate_ratio_and_kernel(s, self.d)
        if not 1 <= int(self.threads) <= 1024:
            raise InvalidValueError("threads", f"must be between 1 and 1024, got {self.threads}")

    @property
    def budgeted(self) -> bool:
        return self.target_speedup is not None or self.target_macs is not None

    def without_latency(self) -> GhostConfig:
        """This policy decided by Eq. 4 alone (what the latency pass refines)."""
        data = self.to_dict()
        data.update(latency=None, target_speedup=None, target_macs=None)
        return GhostConfig.from_dict(data)

    # -- QConfigMapping-style builders -------------------------------------------------------
    def set_global(self, s: int, d: int) -> GhostConfig:
        self.s, self.d = validate_ratio_and_kernel(s, d)
        return self

    def set_object_type(self, conv_type: type | str, s: int | None = None, d: int | None = None) -> GhostConfig:
        """Set s and/or d for every convolution of this class (``nn.Conv1d`` or ``"Conv1d"``)."""
        name = conv_type if isinstance(conv_type, str) else conv_type.__name__
        setting = {k: v for k, v in (("s", s), ("d", d)) if v is not None}
        _check_setting(f"type override {name!r}", setting, self.s, self.d)
        self.type_overrides[name] = setting
        return self

    def set_module_name(self, glob: str, s: int | None = None, d: int | None = None) -> GhostConfig:
        """Set s and/or d for convolutions whose qualified name matches ``glob``."""
        setting = {k: v for k, v in (("s", s), ("d", d)) if v is not None}
        _check_setting(f"override {glob!r}", setting, self.s, self.d)
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
    def setting_for(self, name: str, type_name: str | None = None) -> tuple[int, int]:
        """(s, d) for one convolution: global, then its type's setting, then matching name globs."""
        s, d = self.s, self.d
        if type_name is not None and type_name in self.type_overrides:
            setting = self.type_overrides[type_name]
            s, d = setting.get("s", s), setting.get("d", d)
        for glob, setting in self.overrides.items():
            if fnmatch.fnmatchcase(name, glob):
                s, d = setting.get("s", s), setting.get("d", d)
        return s, d

    def _excluded(self, name: str) -> str | None:
        for glob in self.exclude:
            if fnmatch.fnmatchcase(name, glob):
                return f"excluded by pattern {glob!r}"
        if not any(fnmatch.fnmatchcase(name, glob) for glob in self.include):
            return "not matched by any include pattern"
        return None

    def decide(self, name: str, c: int, n: int, k: Sequence[int], groups: int = 1, is_stem: bool = False,
               type_name: str | None = None) -> LayerDecision:
        """Decide one convolution (c inputs, n filters of kernel k). Order: exclude, include, depthwise,
        stem, per-type and per-name settings, payoff (Eq. 4)."""
        s, d = self.s, self.d
        why = self._excluded(name)
        if why is not None:
            return LayerDecision(name, False, s, d, why)
        if self.keep_depthwise and groups > 1 and groups == c:
            return LayerDecision(name, False, s, d, "depthwise convolution: already as cheap as a ghost")
        if self.keep_stem and is_stem:
            reason = "stem reading the input image (kept by default, as in the authors' code)"
            return LayerDecision(name, False, s, d, reason)
        if name in self.kept:
            return LayerDecision(name, False, s, d, self.kept[name])
        s, d = self.setting_for(name, type_name)
        if s == 1:
            return LayerDecision(name, False, s, d, "s=1: a Ghost module would be the convolution itself")
        if intrinsic_channels(n, s, groups) >= n:
            return LayerDecision(name, False, s, d, f"n={n} too small for s={s}: no maps to save")
        r_s = theoretical_speedup(c, k, s, d, groups)
        if r_s <= 1.0:
            return LayerDecision(name, False, s, d, f"Eq. 4 predicts no gain (r_s={r_s:.2f} <= 1)")
        return LayerDecision(name, True, s, d)
