"""The paper's Eq. 4 (speed-up) and Eq. 5 (compression), exact and in N dimensions.

A convolution with c input channels, n filters of k_1 x ... x k_N and a Ghost module replacing it
with ratio s and a cheap depthwise kernel of d_1 x ... x d_N taps (d x d in the paper) cost, per
output position of the n maps,

    original:  n c K              (K = k_1 ... k_N)
    ghost:     n/s c K + (s-1) n/s D   (D = d_1 ... d_N)

so r_s = c K / (c K / s + (s-1)/s D). For a grouped convolution a filter reads c / groups
channels. The paper states Eq. 5 (the same ratio over weights) equals Eq. 4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ghostify.layers.ghost import cheap_kernel

__all__ = ["theoretical_speedup", "theoretical_compression", "cheap_kernel"]


def theoretical_speedup(c: int, k: Sequence[int], s: int, d: int | Sequence[int], groups: int = 1) -> float:
    """Eq. 4, exact: (c K) / (c K / s + (s - 1) / s D) with c the inputs one filter reads.

    ``d`` is the cheap kernel size (its taps follow :func:`cheap_kernel`) or the cheap kernel itself.
    """
    taps = math.prod(cheap_kernel(k, d) if isinstance(d, int) else d)
    ckk = (c / groups) * math.prod(int(v) for v in k)
    return ckk / (ckk / s + (s - 1) / s * taps)


def theoretical_compression(c: int, k: Sequence[int], s: int, d: int | Sequence[int], groups: int = 1) -> float:
    """Eq. 5, exact: the same ratio over weights (the paper states both are equal)."""
    return theoretical_speedup(c, k, s, d, groups)
