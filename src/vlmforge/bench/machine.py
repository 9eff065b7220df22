"""What the benchmark runs on, and its ceiling: the GEMM rate torch reaches here for large square matrices.

    info = machine_info(device)        # CPU model, cores, threads, GPU, library versions
    gemm = measure_gemm(device, size=2048)   # {"fp32_tflops": ..., "bf16_tflops": ...}
"""

from __future__ import annotations

import os
import platform
import time

from vlmforge.utils.machine import cpu_model


def bf16_supported(device) -> bool:
    """True when vlmforge trains in bf16 autocast on this device (`train.precision: auto`)."""
    from vlmforge.train.loop import choose_precision

    return choose_precision("auto", device)


def cpu_bf16_native() -> bool:
    """True when this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); without, torch emulates it ~100× slower."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def load_average() -> float | None:
    """The 1-minute load average: other work on the machine (a shared CPU makes every figure noisy)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine_info(device) -> dict:
    import torch
    import transformers

    info = {"device": str(device), "cpu": cpu_model(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "bf16": bf16_supported(device), "amx": bool(torch.cpu._is_amx_tile_supported()),
            "bf16_native": device.type == "cuda" or cpu_bf16_native(),
            "load_average_start": load_average()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_tflops(device, dtype, size: int, repeats: int = 5, budget_s: float = 3.0) -> float:
    """Best TFLOP/s of `size`×`size` @ `size`×`size` matmuls (2·size³ FLOPs each) after one warm-up.

    Stops repeating once `budget_s` is spent: bf16 on a CPU without bf16 instructions (AVX2) is emulated,
    ~100× slower than fp32, and five 2048² products would take minutes.
    """
    import torch

    a = torch.randn(size, size, device=device).to(dtype)  # (n, n)
    b = torch.randn(size, size, device=device).to(dtype)  # (n, n)
    synchronize(device)
    started = time.perf_counter()
    torch.matmul(a, b)
    synchronize(device)
    best = spent = time.perf_counter() - started  # the warm-up counts when nothing else fits
    for _ in range(repeats):
        if spent > budget_s:
            break
        synchronize(device)
        started = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        elapsed = time.perf_counter() - started
        best, spent = min(best, elapsed), spent + elapsed
    return 2 * size**3 / best / 1e12


def measure_gemm(device, size: int, repeats: int = 5) -> dict:
    """The machine's ceiling in fp32 and bf16 (where the device has it); fp32 on CUDA is true fp32 (no TF32)."""
    import torch

    result = {"size": size, "fp32_tflops": None, "bf16_tflops": None}
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        result["fp32_tflops"] = gemm_tflops(device, torch.float32, size, repeats)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    if device.type == "cpu" and not cpu_bf16_native():  # emulated: a small product shows the rate in seconds
        result["bf16_tflops"] = gemm_tflops(device, torch.bfloat16, min(size, 256), repeats, budget_s=0.5)
        result["bf16_emulated"] = True
    elif device.type == "cpu" or torch.cuda.is_bf16_supported():
        result["bf16_tflops"] = gemm_tflops(device, torch.bfloat16, size, repeats)
    return result


def best_gemm(*measurements: dict) -> dict:
    """Per precision, the best of several measurements (taken before and after the run: a busy machine only slows)."""
    best = dict(measurements[0])
    for key in ("fp32_tflops", "bf16_tflops"):
        values = [m[key] for m in measurements if m[key] is not None]
        best[key] = max(values) if values else None
    best["measurements"] = len(measurements)
    return best


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc), so the resident size is the live memory."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class StepMemory:
    """Memory a step needs beyond what was resident when it started (activations, gradients, autocast copies).

    CUDA: the allocator's peak minus what was allocated at the start. CPU (Linux): the peak resident
    size during the step (VmHWM, reset at the start) minus the resident size at the start, after
    returning freed heap to the OS. Only this step's own allocations count, whatever else is resident.
    """

    def __init__(self, device):
        self.device = device
        self.start_bytes = 0

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            return
        _trim_heap()
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the current resident size
        except OSError:
            pass
        self.start_bytes = (_proc_status_kb("VmRSS") or 0) * 1024

    def transient_bytes(self) -> int:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.start_bytes
        peak = _proc_status_kb("VmHWM")
        return max(0, (peak or 0) * 1024 - self.start_bytes)


def resident_bytes(model, optimizer) -> int:
    """Bytes a training side keeps between steps: its parameters (each storage once) and optimizer state."""
    import torch

    storages, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)]
    for tensor in tensors:
        key = tensor.untyped_storage().data_ptr()
        if key not in storages:
            storages.add(key)
            total += tensor.untyped_storage().nbytes()
    return total
