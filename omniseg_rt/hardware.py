"""What this machine offers: CPU features, NVIDIA GPUs. No heavy imports at module level."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty where that does not exist)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AMX-BF16 or AVX-512 BF16)."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def cpu_summary() -> dict:
    interesting = sorted(cpu_flags() & {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                                         "amx_int8", "avx_vnni", "asimd", "asimddp", "sve"})
    return {"name": cpu_name(), "machine": platform.machine(), "cores": os.cpu_count(), "flags": interesting,
            "native_bf16": native_bf16()}


@functools.lru_cache(maxsize=1)
def nvidia_gpus() -> tuple[dict, ...]:
    """NVIDIA GPUs this process may use, in CUDA's order: name, compute capability, memory (empty
    if none). nvidia-smi lists every GPU of the machine; ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs)
    selects and orders what CUDA -- and so pycuda's device 0 -- sees."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return ()
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,uuid,name,compute_cap,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return visible_gpus(out, os.environ.get("CUDA_VISIBLE_DEVICES"))


def visible_gpus(smi_csv: str, visible: str | None) -> tuple[dict, ...]:
    """Parse ``nvidia-smi --query-gpu=index,uuid,name,compute_cap,memory.total`` and keep what
    ``visible`` (``CUDA_VISIBLE_DEVICES``; None: all) lets CUDA see, in its order. As CUDA does,
    the list stops at the first entry that matches no GPU."""
    gpus = []
    for line in smi_csv.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            gpus.append({"index": parts[0], "uuid": parts[1], "name": parts[2], "compute_capability": parts[3],
                         "memory": parts[4] if len(parts) > 4 else None})
    if visible is None:
        return tuple(gpus)
    chosen = []
    for entry in (e.strip() for e in visible.split(",")):
        match = next((g for g in gpus if entry and (entry == g["index"] or g["uuid"].startswith(entry))), None)
        if match is None:
            break
        chosen.append(match)
    return tuple(chosen)


def default_threads() -> int:
    """Threads for CPU backends: the cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
