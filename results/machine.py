"""Which kind of machine produced a figure: CPU, instruction set XLA may use, cores, XLA_FLAGS.

Recorded in metadata.json (training), report.json (every run) and the bench JSON, because XLA's CPU
kernels, and so the last float digits and every speed, depend on it (results/agreement.py).
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

# XLA's names for --xla_cpu_max_isa, lowest first; the cap can only lower what the CPU has.
_ISA_ORDER = ["SSE4_2", "AVX", "AVX2", "AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX"]


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = None, set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:  # the first core's lines speak for all
        if line.startswith("model name") and model is None:
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    return model or platform.processor() or "unknown", flags


def isa_cap(xla_flags: str) -> str | None:
    """The instruction set XLA_FLAGS caps XLA to (--xla_cpu_max_isa=...), or None."""
    match = re.search(r"--xla_cpu_max_isa=(\w+)", xla_flags)
    return match.group(1).upper() if match else None


def machine() -> dict:
    """CPU model, whether it has AVX-512, what XLA may use under XLA_FLAGS, cores and the flags themselves."""
    cpu, flags = _cpuinfo()
    avx512 = "avx512f" in flags
    xla_flags = os.environ.get("XLA_FLAGS", "")
    native = "AVX-512" if avx512 else "AVX2" if "avx2" in flags else "below AVX2"
    cap = isa_cap(xla_flags)
    capped = cap is not None and cap in _ISA_ORDER and _ISA_ORDER.index(cap) < _ISA_ORDER.index("AVX512") and avx512
    isa = {"AVX2": "AVX2", "AVX": "AVX", "SSE4_2": "SSE4.2"}.get(cap, native) if capped else native
    return {
        "cpu": cpu,
        "avx512": avx512,
        "isa": isa,  # what XLA's kernels use: the CPU's own, or lower under --xla_cpu_max_isa
        "kind": f"{isa}{' (capped by XLA_FLAGS)' if capped else ''}",
        "cores": os.cpu_count(),
        "xla_flags": xla_flags,
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "fma", "amx", "sse4"))),
        "python": platform.python_version(),
    }


def describe(m: dict | None) -> str:
    """One line for a report: 'Intel(R) Xeon(R) Processor, AVX-512, 2 cores, XLA_FLAGS unset'."""
    if not m:
        return "not recorded"
    if "kind" not in m:  # recorded before the instruction set and XLA_FLAGS were
        avx = {True: "AVX-512", False: "no AVX-512"}.get(m.get("avx512"), "instruction set not recorded")
        return f"{m.get('cpu')}, {avx}, {m.get('cores')} cores, XLA_FLAGS not recorded"
    flags = f"XLA_FLAGS={m['xla_flags']}" if m.get("xla_flags") else "XLA_FLAGS unset"
    return f"{m.get('cpu')}, {m['kind']}, {m.get('cores')} cores, {flags}"
