"""Two processes on this CPU (torchrun, gloo): the loss series equals one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import write_colour_dataset

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
sys.path.insert(0, {tests!r})
from train_helpers import tiny_recipe
from vlmforge.train.loop import train
train(tiny_recipe({model!r}, {data!r}, sys.argv[2], max_steps=3, batch_size=int(sys.argv[1]), save_steps=3))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_vlm_dir, tmp_path):
    data = write_colour_dataset(tmp_path / "data")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), model=str(tiny_vlm_dir), data=str(data)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), "2",
                          str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), "4", str(tmp_path / "single")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "single"), rel=1e-5)
    # Only rank 0 talks and writes: one log of the set-up, one metrics line per step, one set of checkpoints.
    assert two.stderr.count("parameters:") == 1, two.stderr[-3000:]
    assert len(_losses(tmp_path / "ddp")) == 3
    assert sorted(p.name for p in (tmp_path / "ddp").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-latest"]
