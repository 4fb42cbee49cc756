"""Tuning the policy to the target: per-layer latency on onnxruntime, and a budget over layers.

``GhostConfig(latency="measure")`` (``ghostify convert --latency-aware``) times every candidate
convolution on this machine in its deployment form, converts only where a Ghost module measures
faster, and with ``target_speedup`` / ``target_macs`` chooses s per layer to meet a budget at the
least predicted accuracy cost. Timings are cached per machine (:mod:`ghostify.tune.cache`).
"""

from ghostify.tune.budget import LayerOption, choose
from ghostify.tune.cache import LatencyCache, cache_dir, machine_key
from ghostify.tune.policy import (
    latency_policy,
    measure_side_by_side,
    measure_speedup,
    recalibrated_alpha,
    remember_alpha,
)
from ghostify.tune.table import LatencyTable, LayerCase, measure_table

__all__ = ["LayerOption", "choose", "LatencyCache", "cache_dir", "machine_key", "latency_policy",
           "measure_side_by_side", "measure_speedup", "recalibrated_alpha", "remember_alpha", "LayerCase",
           "LatencyTable", "measure_table"]
