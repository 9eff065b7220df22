"""Two processes on this CPU (torchrun, gloo): DDP and FSDP2 runs against one process with the same global batch.

Every process runs with one thread (two processes with two threads each on two cores crawl), so the
comparisons between launch modes are within fp32 tolerance; a killed run and its resumption use the
same launch and are compared exactly.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import write_colour_dataset

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
sys.path.insert(0, {tests!r})
from train_helpers import tiny_recipe
from vlmforge.train.loop import train
train(tiny_recipe({model!r}, {data!r}, sys.argv[2], max_steps=3, batch_size=int(sys.argv[1]), save_steps=3))
"""

# A shipped recipe (argv[1]) as shipped but for a learning rate that moves a tiny model visibly in 4 steps:
# instruct-full is the one that needs sharding (full LLM, grad_accum 4, gradient checkpointing),
# instruct-lora the one with dropout (each process draws its own masks).
RECIPE_SCRIPT = """
import logging, os, signal, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
sys.path.insert(0, {tests!r})
from train_helpers import shipped_recipe
from vlmforge.train.loop import train
name, strategy, batch, run, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
recipe = shipped_recipe(name, {model!r}, {data!r}, run, max_steps=4, batch_size=batch, save_steps=2,
                        log_steps=1, strategy=strategy, export=True)
recipe.train.lr.projector = recipe.train.lr.llm = 1e-3

def die(trainer, step):
    if step == kill_at:  # every rank, after checkpoint-2
        os.kill(os.getpid(), signal.SIGKILL)

train(recipe, resume="--resume" in sys.argv, callbacks=[die])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _launch(script: Path, *args, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # every process of every launch: one thread
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port())] if processes > 1 else []
    return subprocess.run([sys.executable, *launcher, str(script), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)


def test_sharding_behind_accelerate_is_refused_and_fsdp_needs_two_processes():
    """accelerate's FSDP plugin and DeepSpeed ZeRO-3 would write checkpoints of shards: refused in one line."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from vlmforge.errors import ConfigError
    from vlmforge.train.sharded_state import use_fsdp

    def launch(kind, processes=2, zero_stage=2):
        return SimpleNamespace(distributed_type=kind, num_processes=processes,
                               state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage)))

    with pytest.raises(ConfigError, match="accelerate FSDP.*--train.strategy fsdp"):
        use_fsdp(launch(DistributedType.FSDP), "auto")
    with pytest.raises(ConfigError, match="DeepSpeed ZeRO-3"):
        use_fsdp(launch(DistributedType.DEEPSPEED, zero_stage=3), "auto")
    assert not use_fsdp(launch(DistributedType.DEEPSPEED), "auto")  # ZeRO-2 keeps whole parameters
    assert use_fsdp(launch(DistributedType.MULTI_CPU), "fsdp") and use_fsdp(launch(DistributedType.MULTI_GPU), "fsdp")
    assert not use_fsdp(launch(DistributedType.NO, processes=1), "fsdp")
    assert not use_fsdp(launch(DistributedType.MULTI_GPU), "auto")


def test_each_rank_restores_its_own_rng_state(tmp_path):
    """rng.pt of a multi-process run: rank 0's state at the top (as one process writes it), every rank's under 'ranks'."""
    from vlmforge.train.checkpoint import load_checkpoint, rng_state, save_checkpoint

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(rng_state())
    save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {}, "{}", keep=1, rng_states=states)
    for rank in (1, 0):
        torch.manual_seed(99)
        load_checkpoint(tmp_path / "checkpoint-1", model, optimizer, scheduler, rank=rank)
        assert torch.equal(torch.get_rng_state(), states[rank]["torch"])


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_vlm_dir, tmp_path):
    data = write_colour_dataset(tmp_path / "data")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), model=str(tiny_vlm_dir), data=str(data)))
    two = _launch(script, 2, tmp_path / "ddp")
    assert two.returncode == 0, two.stderr[-3000:]
    one = _launch(script, 4, tmp_path / "single", processes=1)
    assert one.returncode == 0, one.stderr[-3000:]
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "single"), rel=1e-5)
    # Only rank 0 talks and writes: one log of the set-up, one metrics line per step, one set of checkpoints.
    assert two.stderr.count("parameters:") == 1, two.stderr[-3000:]
    assert len(_losses(tmp_path / "ddp")) == 3
    assert sorted(p.name for p in (tmp_path / "ddp").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-latest"]


@pytest.fixture(scope="module")
def full_runs(tiny_vlm_dir, tmp_path_factory):
    """instruct-full trained 4 steps with a global batch of 8: one process, FSDP × 2, DDP × 2."""
    root = tmp_path_factory.mktemp("full")
    data = write_colour_dataset(root / "data")
    script = root / "train.py"
    script.write_text(RECIPE_SCRIPT.format(tests=str(Path(__file__).parent), model=str(tiny_vlm_dir), data=str(data)))
    runs = {"script": script}
    for name, strategy, batch, processes in [("single", "auto", 2, 1), ("fsdp", "fsdp", 1, 2), ("ddp", "auto", 1, 2)]:
        result = _launch(script, "instruct-full", strategy, batch, root / name, 0, processes=processes)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = (root / name, result.stderr)
    return runs


@pytest.mark.slow
def test_fsdp_loss_series_equals_one_process(full_runs):
    fsdp, log = full_runs["fsdp"]
    assert "sharded over 2 processes" in log, log[-3000:]
    assert len(_losses(fsdp)) == 4
    assert _losses(fsdp) == pytest.approx(_losses(full_runs["single"][0]), rel=1e-4)


@pytest.mark.slow
def test_fsdp_checkpoint_is_whole_and_export_matches_ddp(full_runs, tiny_vlm_dir):
    from transformers import AutoModelForImageTextToText

    fsdp, ddp = full_runs["fsdp"][0], full_runs["ddp"][0]
    gathered, ddp_weights = load_file(fsdp / "checkpoint-4" / "trainable.safetensors"), load_file(ddp / "checkpoint-4" / "trainable.safetensors")
    assert gathered.keys() == ddp_weights.keys()
    for name in gathered:  # whole tensors, not one rank's shard
        assert gathered[name].shape == ddp_weights[name].shape, name
        torch.testing.assert_close(gathered[name], ddp_weights[name], rtol=1e-4, atol=1e-5, msg=name)
    inputs = {"input_ids": torch.tensor([[1, 5, 9, 13, 17, 21]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    logits = {}
    for name, folder in [("fsdp", fsdp / "final"), ("ddp", ddp / "final"), ("base", tiny_vlm_dir)]:
        model = AutoModelForImageTextToText.from_pretrained(folder).eval()
        with torch.no_grad():
            logits[name] = model(**inputs).logits
    torch.testing.assert_close(logits["fsdp"], logits["ddp"], rtol=1e-4, atol=1e-4)
    assert (logits["fsdp"] - logits["base"]).abs().max() > 1e-2  # it trained: the comparison means something


@pytest.mark.slow
def test_killed_fsdp_run_resumes(full_runs, tmp_path):
    script, (uninterrupted, _) = full_runs["script"], full_runs["fsdp"]
    run = tmp_path / "killed"
    killed = _launch(script, "instruct-full", "fsdp", 1, run, 3)
    assert killed.returncode != 0 and os.readlink(run / "checkpoint-latest") == "checkpoint-2", killed.stderr[-3000:]
    resumed = _launch(script, "instruct-full", "fsdp", 1, run, 0, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert _losses(run) == _losses(uninterrupted)
    a, b = load_file(uninterrupted / "checkpoint-4" / "trainable.safetensors"), load_file(run / "checkpoint-4" / "trainable.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_in_one_process(full_runs, tmp_path):
    """An FSDP checkpoint is an ordinary one: one process (no sharding) continues it like the FSDP run."""
    import shutil

    script, (fsdp, _) = full_runs["script"], full_runs["fsdp"]
    run = tmp_path / "continued"
    run.mkdir()
    shutil.copytree(fsdp / "checkpoint-2", run / "checkpoint-2")
    resumed = _launch(script, "instruct-full", "auto", 2, run, 0, "--resume", processes=1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _losses(run) == pytest.approx(_losses(full_runs["single"][0])[2:], rel=1e-4)
    a, b = load_file(fsdp / "checkpoint-4" / "trainable.safetensors"), load_file(run / "checkpoint-4" / "trainable.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_killed_ddp_run_with_dropout_resumes_bit_exact(tiny_vlm_dir, tmp_path):
    """Shipped instruct-lora (dropout 0.05) under DDP: each rank's RNG state is saved and restored, not rank 0's for all.

    The ranks' generators drift apart only when their dropout inputs differ in size (the draws
    depend on the element count), hence answers of varied lengths.
    """
    data = write_colour_dataset(tmp_path / "data", varied_lengths=True)
    script = tmp_path / "train.py"
    script.write_text(RECIPE_SCRIPT.format(tests=str(Path(__file__).parent), model=str(tiny_vlm_dir), data=str(data)))
    whole = _launch(script, "instruct-lora", "auto", 1, tmp_path / "whole", 0)
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = tmp_path / "killed"
    killed = _launch(script, "instruct-lora", "auto", 1, run, 3)
    assert killed.returncode != 0 and os.readlink(run / "checkpoint-latest") == "checkpoint-2", killed.stderr[-3000:]
    ranks = torch.load(run / "checkpoint-2" / "rng.pt", weights_only=True)["ranks"]
    assert not torch.equal(ranks[0]["torch"], ranks[1]["torch"])  # what would be lost by restoring rank 0's everywhere
    resumed = _launch(script, "instruct-lora", "auto", 1, run, 0, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(tmp_path / "whole" / "checkpoint-4" / "trainable.safetensors"), load_file(run / "checkpoint-4" / "trainable.safetensors")
    assert any("lora_A" in name for name in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
