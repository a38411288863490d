"""What machine a number was measured on: the CPU (model, cores, the vector and bfloat16
instruction sets that decide matmul speed) or the GPU, as results files and ``eval.json`` name it."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def cpu_description() -> str:
    """This machine's CPU: model, cores, and the wide-vector and bfloat16 instruction sets that
    decide float32 and bfloat16 matmul speed (Linux ``/proc/cpuinfo``)."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    if not flags:  # not Linux, or unreadable: the instruction sets are unknown, not absent
        return f"{model}, {os.cpu_count()} CPUs"
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, {'/'.join(wanted) or 'no avx2'}" + \
        ("" if {"avx512_bf16", "amx_bf16"} & flags else " (no bfloat16 instructions)")


def device_description(device: str) -> str:
    """The GPU's name for a CUDA device (``cuda``, ``cuda:1``), else the CPU's description."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return cpu_description()
