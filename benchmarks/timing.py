"""Timing helpers shared by the benchmark scripts (``throughput.py``, ``screen.py``).

The scripts run as ``python benchmarks/<script>.py``, so they import this module as ``timing``.
"""

from __future__ import annotations

import gc
import os
import platform
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously), so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(device: torch.device, into: dict[str, float], key: str) -> Iterator[None]:
    """Measure the wall-clock seconds of the ``with`` block (device synchronised on both ends) into ``into[key]``."""
    sync(device)
    t0 = time.perf_counter()
    yield
    sync(device)
    into[key] = time.perf_counter() - t0


def is_oom(err: BaseException) -> bool:
    """Whether an exception is an out-of-memory error (host or device)."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def free_memory(device: torch.device) -> None:
    """Release what a finished (or failed) run left: Python garbage and the CUDA cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (or what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device, threads: bool = False) -> str:
    """The GPU name, or the CPU model (with the torch thread and logical CPU counts when ``threads``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if threads:
        return f"{cpu_name()} ({torch.get_num_threads()} torch threads, {os.cpu_count()} logical CPUs)"
    return cpu_name()


def device_tag(device: torch.device) -> str:
    """File-name tag: ``cpu`` or ``cuda_<gpu name slug>``."""
    if device.type != "cuda":
        return "cpu"
    return "cuda_" + re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")
