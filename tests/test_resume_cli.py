"""`vlmforge train instruct-lora` killed with SIGKILL and continued with `--resume` ends bit-identical.

The shipped recipe as shipped (LoRA dropout 0.05, grad_accum 2), through the real CLI, killed at
whatever moment follows its first checkpoint. All three processes inherit the same environment, so
they run the same kernels with the same thread count.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import write_colour_dataset


def _command(model, data, run, *extra):
    return [sys.executable, "-m", "vlmforge", "train", "instruct-lora", "--model.path", str(model),
            "--data.paths", str(data), "--train.output_dir", str(run), "--train.max_steps", "20",
            "--train.batch_size", "4", "--train.save_steps", "5", "--train.seed", "3",
            "--train.device", "cpu", "--train.precision", "fp32", "--no-train.export", *extra]


def _kill_after_first_checkpoint(command, run: Path) -> int:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while process.poll() is None and not (run / "checkpoint-latest").exists():
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    stderr = process.communicate()[1].decode()
    assert process.returncode == -signal.SIGKILL, stderr[-2000:]  # killed mid-run, not finished or failed
    return int(os.readlink(run / "checkpoint-latest").split("-")[1])


@pytest.mark.slow
def test_cli_kill_and_resume_of_shipped_instruct_lora_is_bit_exact(tiny_vlm_dir, tmp_path):
    data = write_colour_dataset(tmp_path / "data")
    whole = subprocess.run(_command(tiny_vlm_dir, data, tmp_path / "whole"), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    run = tmp_path / "killed"
    killed_at = _kill_after_first_checkpoint(_command(tiny_vlm_dir, data, run), run)
    assert 5 <= killed_at < 20
    resumed = subprocess.run(_command(tiny_vlm_dir, data, run, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {run / f'checkpoint-{killed_at}'}" in resumed.stderr
    a = load_file(tmp_path / "whole" / "checkpoint-latest" / "trainable.safetensors")
    b = load_file(run / "checkpoint-latest" / "trainable.safetensors")
    assert a.keys() == b.keys() and any("lora_A" in name for name in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == [10, 20]
