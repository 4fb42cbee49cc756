"""``bench``'s CPU report on ARM: ``/proc/cpuinfo`` samples of real boards parse to their core names and ISA flags.

The samples are the files as those kernels print them (processor blocks, then the board's lines on
a Raspberry Pi); identical processor blocks are repeated by number rather than written out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ghostify.runtime.cpu import cpu_info, parse_cpuinfo


def _blocks(template: str, numbers: range) -> str:
    return "".join(template.format(n=n) for n in numbers)


# Raspberry Pi 4 Model B, Raspberry Pi OS (64-bit), kernel 6.1: BCM2711, 4x Cortex-A72
PI4 = _blocks("""processor\t: {n}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

""", range(4)) + """Hardware\t: BCM2835
Revision\t: c03114
Serial\t\t: 10000000a3b2c1d0
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""

# the same board on 32-bit Raspberry Pi OS (armv7l kernel): a generic "model name", neon not asimd
PI4_ARMV7 = _blocks("""processor\t: {n}
model name\t: ARMv7 Processor rev 3 (v7l)
BogoMIPS\t: 108.00
Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32
CPU implementer\t: 0x41
CPU architecture: 7
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

""", range(4)) + """Hardware\t: BCM2711
Revision\t: c03114
Serial\t\t: 10000000a3b2c1d0
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""

# Raspberry Pi 5 Model B: BCM2712, 4x Cortex-A76 (fp16, dot product)
PI5 = _blocks("""processor\t: {n}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

""", range(4)) + """Revision\t: d04170
Serial\t\t: 5a1b2c3d4e5f6071
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""

# AWS Graviton2 (m6g.large): Neoverse N1; an Ampere Altra prints the same blocks, 80 of them
GRAVITON2 = _blocks("""processor\t: {n}
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

""", range(2))

# AWS Graviton3 (c7g.large): Neoverse V1 with SVE, int8 matmul and bf16
GRAVITON3 = _blocks("""processor\t: {n}
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc \
dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm \
bf16 dgh rng
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1

""", range(2))

# Apple M1 (MacBook Air, 2020) under Asahi Linux: 4 Icestorm (efficiency) then 4 Firestorm (performance) cores
_M1 = """processor\t: {n}
BogoMIPS\t: 48.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc \
dcpop sha3 asimddp sha512 asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp flagm2 frint
CPU implementer\t: 0x61
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: {part}
CPU revision\t: 1

"""
APPLE_M1 = "".join(_M1.format(n=n, part="0x022" if n < 4 else "0x023") for n in range(8))

# AWS Graviton4 (r8g): Neoverse V2, SVE2
GRAVITON4 = """processor\t: 0
BogoMIPS\t: 2000.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc \
dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm sb paca pacg dcpodp sve2 sveaes svepmull \
svebitperm svesha3 svesm4 flagm2 frint svei8mm svebf16 i8mm bf16 dgh rng bti
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd4f
CPU revision\t: 1
"""

ARM_ISA = {"asimd", "neon", "asimdhp", "asimddp", "fphp", "i8mm", "bf16", "sve", "sve2", "sme"}


@pytest.mark.parametrize(("text", "model", "cores", "isa"), [
    (PI4, "ARM Cortex-A72 (Raspberry Pi 4 Model B Rev 1.4)", [("0xd08", "Cortex-A72", 4)], {"asimd"}),
    (PI4_ARMV7, "ARM Cortex-A72 (Raspberry Pi 4 Model B Rev 1.4)", [("0xd08", "Cortex-A72", 4)], {"neon"}),
    (PI5, "ARM Cortex-A76 (Raspberry Pi 5 Model B Rev 1.0)", [("0xd0b", "Cortex-A76", 4)],
     {"asimd", "fphp", "asimdhp", "asimddp"}),
    (GRAVITON2, "ARM Neoverse-N1", [("0xd0c", "Neoverse-N1", 2)], {"asimd", "fphp", "asimdhp", "asimddp"}),
    (GRAVITON3, "ARM Neoverse-V1", [("0xd40", "Neoverse-V1", 2)],
     {"asimd", "fphp", "asimdhp", "asimddp", "sve", "i8mm", "bf16"}),
    (GRAVITON4, "ARM Neoverse-V2", [("0xd4f", "Neoverse-V2", 1)],
     {"asimd", "fphp", "asimdhp", "asimddp", "sve", "sve2", "i8mm", "bf16"}),
    (APPLE_M1, "Apple 4× M1 Icestorm + 4× M1 Firestorm", [("0x022", "M1 Icestorm", 4), ("0x023", "M1 Firestorm", 4)],
     {"asimd", "fphp", "asimdhp", "asimddp"}),
], ids=["pi4-cortex-a72", "pi4-armv7l", "pi5-cortex-a76", "graviton2-neoverse-n1", "graviton3-neoverse-v1",
        "graviton4-neoverse-v2", "apple-m1-asahi"])
def test_arm_samples(text: str, model: str, cores: list[tuple[str, str, int]], isa: set[str]) -> None:
    info = parse_cpuinfo(text)
    assert info["model"] == model
    assert [(c["part"], c["name"], c["count"]) for c in info["cores"]] == cores
    assert info["vendor"] == ("Apple" if text is APPLE_M1 else "ARM")
    assert set(info["isa"]) == isa  # exactly these of the flags onnxruntime's kernels care about
    assert set(info["isa"]) <= ARM_ISA


def test_unknown_parts_and_implementers_still_parse() -> None:
    text = ("processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x99\nCPU part\t: 0x123\n\n"
            "processor\t: 1\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU part\t: 0xfff\n")
    info = parse_cpuinfo(text)
    assert [(c["vendor"], c["name"]) for c in info["cores"]] == [("implementer 0x99", "part 0x123"),
                                                                  ("ARM", "part 0xfff")]
    assert info["model"] == "1× implementer 0x99 part 0x123 + 1× ARM part 0xfff" and info["isa"] == ["asimd"]


def test_cpu_info_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(APPLE_M1)
    info = cpu_info(path)
    assert info["model"] == "Apple 4× M1 Icestorm + 4× M1 Firestorm" and "asimddp" in info["isa"]
    assert info["arch"] and info["logical_cpus"]  # from this machine: the file only names the CPU
