"""The machine a figure was measured on: CPU model and vector ISA, usable CPUs, load, library versions.

Written next to every benchmark figure (`tinyllm bench` and the scripts under tools/), because a
number means little without the machine and how busy it was.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import torch


def _cpu_model() -> str:
    # platform.processor() is often empty or just "x86_64" on Linux; lscpu names the part.
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name" and value.strip():
                return value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


# The x86 flags that change which kernels llama.cpp, onnxruntime (MLAS) and tinyllm's own run, and
# so their speed, and, where a kernel rounds, their results.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_isa() -> str:
    """The ISA flags of ISA_FLAGS this CPU has ('avx2 fma', 'avx2 fma avx512f avx512_vnni', …), or
    the machine's architecture where /proc/cpuinfo has no x86 flags."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    present = [flag for flag in ISA_FLAGS if flag in flags]
    return " ".join(present) if flags else platform.machine()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity), which a container may set below cpu_count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine_info() -> dict:
    usable = usable_cpus()
    load = load_average()
    return {
        "cpu_model": _cpu_model(),
        "isa": cpu_isa(),
        "processor": platform.processor(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        # The benchmark machines are often shared: a high load average explains a slow figure.
        "load_average_1_5_15": load,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }


def load_average() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except (OSError, AttributeError):
        return None


