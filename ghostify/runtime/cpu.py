"""Which CPU a benchmark ran on: model, architecture, the ISA extensions onnxruntime's kernels use.

Latency figures mean little without the machine, and ratios measured on AVX-512 do not carry to
a NEON board. ``cpu_info`` reads ``/proc/cpuinfo``:

* x86: ``model name`` and ``flags``;
* ARM: every processor block's ``CPU implementer`` and ``CPU part`` (a big.LITTLE chip has two
  or three core types), mapped to names with the tables below (from the Linux kernel's
  ``arch/arm64/include/asm/cputype.h`` and the vendors' manuals), and ``Features``.

Elsewhere (macOS, Windows, a container hiding /proc) it falls back to :mod:`platform`.
"""

from __future__ import annotations

import os
import platform
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["cpu_info", "parse_cpuinfo", "ARM_IMPLEMENTERS", "ARM_PARTS"]

X86_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile",
             "amx_bf16", "amx_int8", "avx_vnni")
# The kernel's names (arch/arm64/kernel/cpuinfo.c): asimd = NEON (neon on 32-bit kernels); asimdhp and
# fphp = fp16 arithmetic; asimddp = dot product (int8 GEMM); i8mm, bf16, sve, sve2, sme: Armv8.6+/v9
ARM_FLAGS = ("asimd", "neon", "asimdhp", "asimddp", "fphp", "i8mm", "bf16", "sve", "sve2", "sme")

ARM_IMPLEMENTERS = {"0x41": "ARM", "0x42": "Broadcom", "0x43": "Cavium", "0x46": "Fujitsu", "0x48": "HiSilicon",
                    "0x4e": "NVIDIA", "0x50": "Applied Micro", "0x51": "Qualcomm", "0x53": "Samsung",
                    "0x61": "Apple", "0x6d": "Microsoft", "0xc0": "Ampere"}

ARM_PARTS = {
    ("0x41", "0xd03"): "Cortex-A53", ("0x41", "0xd04"): "Cortex-A35", ("0x41", "0xd05"): "Cortex-A55",
    ("0x41", "0xd07"): "Cortex-A57", ("0x41", "0xd08"): "Cortex-A72", ("0x41", "0xd09"): "Cortex-A73",
    ("0x41", "0xd0a"): "Cortex-A75", ("0x41", "0xd0b"): "Cortex-A76", ("0x41", "0xd0c"): "Neoverse-N1",
    ("0x41", "0xd0d"): "Cortex-A77", ("0x41", "0xd0e"): "Cortex-A76AE", ("0x41", "0xd40"): "Neoverse-V1",
    ("0x41", "0xd41"): "Cortex-A78", ("0x41", "0xd42"): "Cortex-A78AE", ("0x41", "0xd44"): "Cortex-X1",
    ("0x41", "0xd46"): "Cortex-A510", ("0x41", "0xd47"): "Cortex-A710", ("0x41", "0xd48"): "Cortex-X2",
    ("0x41", "0xd49"): "Neoverse-N2", ("0x41", "0xd4a"): "Neoverse-E1", ("0x41", "0xd4b"): "Cortex-A78C",
    ("0x41", "0xd4c"): "Cortex-X1C", ("0x41", "0xd4d"): "Cortex-A715", ("0x41", "0xd4e"): "Cortex-X3",
    ("0x41", "0xd4f"): "Neoverse-V2", ("0x41", "0xd80"): "Cortex-A520", ("0x41", "0xd81"): "Cortex-A720",
    ("0x41", "0xd82"): "Cortex-X4", ("0x41", "0xd84"): "Neoverse-V3", ("0x41", "0xd85"): "Cortex-X925",
    ("0x41", "0xd87"): "Cortex-A725", ("0x41", "0xd8e"): "Neoverse-N3",
    ("0x61", "0x022"): "M1 Icestorm", ("0x61", "0x023"): "M1 Firestorm", ("0x61", "0x024"): "M1 Pro Icestorm",
    ("0x61", "0x025"): "M1 Pro Firestorm", ("0x61", "0x028"): "M1 Max Icestorm",
    ("0x61", "0x029"): "M1 Max Firestorm", ("0x61", "0x032"): "M2 Blizzard", ("0x61", "0x033"): "M2 Avalanche",
    ("0x61", "0x034"): "M2 Pro Blizzard", ("0x61", "0x035"): "M2 Pro Avalanche",
    ("0x61", "0x038"): "M2 Max Blizzard", ("0x61", "0x039"): "M2 Max Avalanche",
    ("0xc0", "0xac3"): "Ampere-1", ("0xc0", "0xac4"): "Ampere-1a",
    ("0x51", "0x001"): "Oryon", ("0x4e", "0x004"): "Carmel",
}


def _blocks(text: str) -> list[dict[str, str]]:
    """``/proc/cpuinfo`` as one dict per processor block (plus trailing machine-wide fields)."""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if blocks[-1]:
                blocks.append({})
            continue
        blocks[-1][key.strip()] = value.strip()
    return [b for b in blocks if b]


def _arm_cores(blocks: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Core types of an ARM chip: implementer, part, name and how many cores have it."""
    kinds = Counter((b["CPU implementer"].lower(), b.get("CPU part", "?").lower())
                    for b in blocks if "CPU implementer" in b)
    cores = []
    for (impl, part), count in kinds.items():
        vendor = ARM_IMPLEMENTERS.get(impl, f"implementer {impl}")
        name = ARM_PARTS.get((impl, part), f"part {part}")
        cores.append({"implementer": impl, "vendor": vendor, "part": part, "name": name, "count": count})
    return cores


def _arm_model(cores: list[dict[str, Any]], blocks: list[dict[str, str]]) -> str:
    one_vendor = len({c["vendor"] for c in cores}) == 1
    named = [c["name"] if one_vendor else f"{c['vendor']} {c['name']}" for c in cores]
    kinds = " + ".join(f"{c['count']}× {n}" if len(cores) > 1 else n for c, n in zip(cores, named, strict=True))
    vendor = f"{cores[0]['vendor']} " if one_vendor else ""
    board = next((b[k] for b in blocks for k in ("Model", "Hardware") if k in b), None)  # e.g. a Raspberry Pi
    return f"{vendor}{kinds}" + (f" ({board})" if board else "")


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """Model, vendor, core types and ISA flags from the text of a ``/proc/cpuinfo`` file."""
    blocks = _blocks(text)
    first = blocks[0] if blocks else {}
    info: dict[str, Any] = {}
    if "model name" in first:  # x86; 32-bit ARM kernels print a generic one ("ARMv7 Processor rev 3 (v7l)")
        info["model"] = first["model name"]
    flags = set((first.get("flags") or first.get("Features") or "").split())
    cores = _arm_cores(blocks)
    if cores:  # the core names say more than any "model name" an ARM kernel prints
        info["cores"] = cores
        info["model"] = _arm_model(cores, blocks)
        info["vendor"] = cores[0]["vendor"]
    elif "Hardware" in first or any("Hardware" in b for b in blocks):
        info.setdefault("model", next(b["Hardware"] for b in blocks if "Hardware" in b))
    if "vendor_id" in first:
        info["vendor"] = first["vendor_id"]
    info["isa"] = [f for f in X86_FLAGS + ARM_FLAGS if f in flags]
    return info


def cpu_info(cpuinfo_path: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model, architecture, ISA extensions that matter to onnxruntime's kernels, core counts."""
    info: dict[str, Any] = {"arch": platform.machine(), "model": platform.processor() or platform.machine(),
                            "isa": [], "logical_cpus": os.cpu_count(),
                            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                            else os.cpu_count()}
    try:
        text = Path(cpuinfo_path).read_text(errors="replace")
    except OSError:
        return info
    info.update(parse_cpuinfo(text))
    return info
