"""Checkpoint integrity without a VLM: a two-layer toy model is enough to save, damage and verify.

The user-visible versions of these scenarios (CLI, one line, exit 2) are in test_hostile_checkpoints.py.
"""

import errno
import json
import logging
import os
import pickle
import subprocess
import sys

import pytest
import torch

from vlmforge.train import checkpoint as ckpt
from vlmforge.train.checkpoint import (CHECKPOINT_FILES, CheckpointError, DiskFullError, checkpoint_problem,
                                       clean_output_dir, latest_checkpoint, list_checkpoints, load_checkpoint,
                                       save_checkpoint, verify_for_export, write_manifest)
from vlmforge.train.metrics_log import MetricsLog, read_metrics
from vlmforge.utils import atomic
from vlmforge.utils.atomic import is_disk_full, remove_stale_temporaries

RECIPE_YAML = "model:\n  path: m\n"


def toy(width=4, seed=0):
    """A model with a trainable and a frozen layer, and an optimizer that has taken one step."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Linear(width, 2))
    model[0].weight.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def save(out, step, keep=5, **kwargs):
    return save_checkpoint(out, step, *toy(**kwargs), {"skipped_steps": 0}, RECIPE_YAML, keep)


@pytest.fixture
def two(tmp_path):
    """checkpoint-2 and checkpoint-4 in tmp_path/run."""
    run = tmp_path / "run"
    save(run, 2)
    save(run, 4)
    return run


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGE = {
    "truncated safetensors": (lambda c: _truncate(c / "trainable.safetensors"), "trainable.safetensors has"),
    "zero-byte safetensors": (lambda c: _truncate(c / "trainable.safetensors", 0), "trainable.safetensors has 0 bytes"),
    "truncated optimizer": (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt has"),
    "missing rng": (lambda c: (c / "rng.pt").unlink(), "rng.pt is missing"),
    "torn trainer_state": (lambda c: _truncate(c / "trainer_state.json"), "trainer_state.json has"),
    "same-size bit flip": (lambda c: (c / "scheduler.json").write_text((c / "scheduler.json").read_text().replace("1", "2", 1)),
                           "scheduler.json does not match the checksum"),
    "missing manifest entry": (lambda c: (c / "manifest.json").write_text('{"files": {}}'), "not listed in manifest.json"),
}


def test_saved_checkpoint_has_every_file_and_a_manifest_that_verifies(two):
    assert sorted(p.name for p in (two / "checkpoint-4").iterdir()) == sorted(CHECKPOINT_FILES)
    manifest = json.loads((two / "checkpoint-4" / "manifest.json").read_text())["files"]
    assert set(manifest) == set(CHECKPOINT_FILES) - {"manifest.json"}
    assert manifest["optimizer.pt"]["size"] == (two / "checkpoint-4" / "optimizer.pt").stat().st_size
    assert checkpoint_problem(two / "checkpoint-4") is None
    assert latest_checkpoint(two) == two / "checkpoint-4"


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_newest_falls_back_with_one_line(two, kind, caplog):
    damage, expected = DAMAGE[kind]
    damage(two / "checkpoint-4")
    assert expected in checkpoint_problem(two / "checkpoint-4")
    with caplog.at_level(logging.WARNING, logger="vlmforge"):
        assert latest_checkpoint(two) == two / "checkpoint-2"
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "checkpoint-4 is damaged" in lines[0] and expected in lines[0]
    assert "resuming from checkpoint-2" in lines[0]


def test_no_intact_checkpoint_is_refused_naming_each(two):
    _truncate(two / "checkpoint-4" / "trainable.safetensors", 0)
    (two / "checkpoint-2" / "rng.pt").unlink()
    with pytest.raises(CheckpointError, match=r"no intact checkpoint.*checkpoint-4 is damaged.*checkpoint-2 is damaged "
                                              r"\(rng.pt is missing\).*Move the"):
        latest_checkpoint(two)
    assert latest_checkpoint(two.parent / "empty") is None


def test_checkpoint_without_manifest_gets_a_structural_check(two):
    """Checkpoints written before manifests still resume; a torn one among them is still caught."""
    for folder in (two / "checkpoint-2", two / "checkpoint-4"):
        (folder / "manifest.json").unlink()
    assert latest_checkpoint(two) == two / "checkpoint-4"
    _truncate(two / "checkpoint-4" / "trainable.safetensors", 0.9)
    assert checkpoint_problem(two / "checkpoint-4") == "trainable.safetensors is truncated"
    _truncate(two / "checkpoint-2" / "optimizer.pt", 0.9)
    assert checkpoint_problem(two / "checkpoint-2") == "optimizer.pt is truncated"
    (two / "checkpoint-2" / "optimizer.pt").write_bytes((two / "checkpoint-4" / "optimizer.pt").read_bytes())
    (two / "checkpoint-2" / "trainer_state.json").write_text('{"step": ')
    assert checkpoint_problem(two / "checkpoint-2") == "trainer_state.json is not valid JSON (torn?)"


def test_a_checkpoint_counts_only_with_every_file(two):
    (two / "checkpoint-2" / "recipe.yaml").unlink()
    assert list_checkpoints(two) == [two / "checkpoint-4"]


def test_load_restores_the_saved_weights(two):
    model, optimizer, scheduler = toy(seed=1)
    state = load_checkpoint(two / "checkpoint-4", model, optimizer, scheduler)
    saved, _, _ = toy(seed=0)
    assert state["step"] == 4
    torch.testing.assert_close(model[1].weight, saved[1].weight, rtol=0, atol=0)


def test_other_shapes_or_trainability_are_refused_before_anything_changes(two):
    model, optimizer, scheduler = toy(width=8)
    before = model[1].weight.detach().clone()
    with pytest.raises(CheckpointError, match=r"'0.bias' is \(4,\) in checkpoint-4 but \(8,\) in this model"):
        load_checkpoint(two / "checkpoint-4", model, optimizer, scheduler)
    assert torch.equal(model[1].weight, before)
    model, optimizer, scheduler = toy()
    model[0].weight.requires_grad_(True)
    with pytest.raises(CheckpointError, match="this run trains '0.weight', which checkpoint-4 does not hold"):
        load_checkpoint(two / "checkpoint-4", model, optimizer, scheduler)


def test_recipe_difference_is_named(two):
    from vlmforge.config import save_yaml
    from vlmforge.train.recipe import Recipe

    saved = Recipe()
    save_yaml(saved, two / "checkpoint-4" / "recipe.yaml")
    current = Recipe()
    ckpt.check_recipe_compatible(two / "checkpoint-4", current)
    current.lora.rank = saved.lora.rank * 2
    with pytest.raises(CheckpointError, match=f"lora.rank = {saved.lora.rank}, this run has {saved.lora.rank * 2}"):
        ckpt.check_recipe_compatible(two / "checkpoint-4", current)
    current = Recipe()
    current.trainable.llm = "full"
    with pytest.raises(CheckpointError, match="trainable.llm = 'lora', this run has 'full'"):
        ckpt.check_recipe_compatible(two / "checkpoint-4", current)


def test_other_base_model_is_refused(two, tmp_path):
    from vlmforge.config import save_yaml
    from vlmforge.train.recipe import Recipe

    for name, text in (("a", '{"hidden_size": 32}'), ("a-copy", '{"hidden_size": 32}'), ("b", '{"hidden_size": 64}')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(text)
    saved = Recipe()
    saved.model.path = str(tmp_path / "a")
    save_yaml(saved, two / "checkpoint-4" / "recipe.yaml")
    current = Recipe()
    current.model.path = str(tmp_path / "a-copy")  # moved or copied: same config
    ckpt.check_recipe_compatible(two / "checkpoint-4", current)
    current.model.path = str(tmp_path / "b")
    with pytest.raises(CheckpointError, match="trained from model.path .*a, this run loads .*b"):
        ckpt.check_recipe_compatible(two / "checkpoint-4", current)


class Payload:
    pass


@pytest.mark.parametrize("name", ["optimizer.pt", "rng.pt"])
def test_pickled_file_is_one_line_that_says_what_to_do(two, name):
    with open(two / "checkpoint-4" / name, "wb") as handle:
        pickle.dump({"state": Payload()}, handle, protocol=2)
    write_manifest(two / "checkpoint-4")  # passes verification: the refusal comes from weights_only loading
    with pytest.raises(CheckpointError, match=f"{name} holds pickled Python objects.*weights_only.*Resume from another") as error:
        load_checkpoint(two / "checkpoint-4", *toy())
    assert "\n" not in str(error.value)


def _full_disk_after(calls: int, monkeypatch):
    """torch.save that writes a little, then fails as a full disk does, from the `calls`-th call on."""
    real, count = torch.save, {"n": 0}

    def limited(obj, handle, *args, **kwargs):
        count["n"] += 1
        if count["n"] < calls:
            return real(obj, handle, *args, **kwargs)
        handle.write(b"\0" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", limited)


def test_disk_full_removes_the_partial_folder_and_names_the_intact_one(two, monkeypatch):
    _full_disk_after(2, monkeypatch)  # optimizer.pt is written, rng.pt fails
    with pytest.raises(DiskFullError, match=r"^no space left on the file system at .* MB free\) while writing "
                                            r"checkpoint-6; checkpoint-4 is intact: .*--resume$"):
        save(two, 6)
    assert sorted(p.name for p in two.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-latest"]
    assert os.readlink(two / "checkpoint-latest") == "checkpoint-4"
    monkeypatch.undo()
    assert latest_checkpoint(two) == two / "checkpoint-4"


def test_disk_full_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    _full_disk_after(1, monkeypatch)
    with pytest.raises(DiskFullError, match="while writing checkpoint-2; no earlier checkpoint is intact"):
        save(tmp_path / "run", 2)
    assert list((tmp_path / "run").iterdir()) == []


def test_full_disk_is_recognised_through_wrappers():
    from safetensors import SafetensorError

    assert is_disk_full(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(RuntimeError("unexpected pos"))


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), subprocess.Popen(["sleep", "60"])
    try:
        for name in (f".checkpoint-6.tmp-{dead}", f".checkpoint-2.trash-{dead}", f".checkpoint-8.tmp-{live.pid}",
                     f".checkpoint-4.old-{dead}", f".checkpoint-10.tmp-{os.getpid()}"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "trainable.safetensors").write_bytes(b"x" * 10)
        (tmp_path / f".checkpoint-latest.tmp-{dead}").symlink_to("checkpoint-4")
        (tmp_path / f".metrics.jsonl.tmp-{dead}").write_text("{}")
        removed = clean_output_dir(tmp_path)
        assert sorted(removed) == sorted([f".checkpoint-6.tmp-{dead}", f".checkpoint-2.trash-{dead}",
                                          f".checkpoint-10.tmp-{os.getpid()}", f".checkpoint-latest.tmp-{dead}",
                                          f".metrics.jsonl.tmp-{dead}"])
        # killed between the two renames of atomic_directory: the old copy goes back under its name
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint-4", f".checkpoint-8.tmp-{live.pid}"])
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_kill_mid_prune_never_leaves_a_half_deleted_checkpoint(two, monkeypatch):
    real = atomic.shutil.rmtree

    def killed_halfway(path, *args, **kwargs):
        if ".trash-" in str(path) and (path / "optimizer.pt").exists():
            (path / "optimizer.pt").unlink()
            raise KeyboardInterrupt  # the kill arrives after one file is gone
        return real(path, *args, **kwargs)

    monkeypatch.setattr(atomic.shutil, "rmtree", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        save(two, 6, keep=2)
    monkeypatch.undo()
    assert [p.name for p in ckpt.checkpoint_folders(two)] == ["checkpoint-4", "checkpoint-6"]
    assert all(checkpoint_problem(p) is None for p in ckpt.checkpoint_folders(two))
    assert clean_output_dir(two) == [f".checkpoint-2.trash-{os.getpid()}"]


def test_prune_keeps_the_newest_up_to_the_step_just_written(tmp_path):
    run = tmp_path / "run"
    for step in (2, 4, 8):
        save(run, step, keep=5)
    save(run, 6, keep=2)  # resumed from 4 after 8 was found damaged: 8 is left to be overwritten
    assert [p.name for p in ckpt.checkpoint_folders(run)] == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]


def test_export_verification_names_the_damage_and_an_intact_sibling(two):
    verify_for_export(two / "checkpoint-4")
    (two / "checkpoint-4" / "optimizer.pt").unlink()  # export does not need it
    verify_for_export(two / "checkpoint-4")
    _truncate(two / "checkpoint-4" / "trainable.safetensors")
    with pytest.raises(CheckpointError, match=r"checkpoint-4 is damaged: trainable.safetensors has \d+ bytes, \d+ were "
                                              r"written; .*checkpoint-2 is intact"):
        verify_for_export(two / "checkpoint-latest")


def test_torn_last_metrics_line_is_repaired_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo')
    assert [row["step"] for row in read_metrics(path)] == [1, 2, 3]
    MetricsLog(tmp_path, resume_step=2)
    assert path.read_text() == "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2))


def test_disk_full_message_names_the_file_and_its_file_system(tmp_path):
    error = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.jsonl"))
    message = atomic.disk_full_message(error)
    assert message.startswith("no space left on the file system at ") and f"while writing {tmp_path / 'out.jsonl'}" in message
    assert atomic.disk_full_message(ValueError("no")) is None
