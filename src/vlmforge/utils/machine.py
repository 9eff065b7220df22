"""What a run ran on, for the figures it publishes: CPU model, cores, torch threads.

    describe_machine()   # {"cpu": "AMD EPYC 7B13", "cores": 2, "torch_threads": 2}
"""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name as `lscpu` / /proc/cpuinfo give it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> dict:
    """CPU model, the cores this process may use and torch's intra-op thread count."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cores": cores, "torch_threads": torch.get_num_threads()}
