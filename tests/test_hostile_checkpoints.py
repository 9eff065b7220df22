"""Hostile and clumsy run folders (issues 19 and 20): what a user sees through the CLI.

Every scenario ends in either a run that goes on (with one line saying what was skipped) or one
`error:` line and exit 2, never a traceback. The toy-model versions, and the damage kinds one by
one, are in test_checkpoint_integrity.py.
"""

import errno
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys

import pytest
import torch

from train_helpers import tiny_recipe, write_colour_dataset
from vlmforge.cli import main
from vlmforge.config import save_yaml
from vlmforge.train.checkpoint import checkpoint_problem, write_manifest
from vlmforge.train.loop import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_colour_dataset(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module")
def trained(tiny_vlm_dir, data, tmp_path_factory):
    """A finished 4-step run with checkpoint-2 and checkpoint-4."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_recipe(tiny_vlm_dir, data, run, max_steps=4, save_steps=2, save_total_limit=3))
    return run


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the trained run folder, free to damage."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy, symlinks=True)
    return copy


def _train(run, capsys, *flags):
    code = main(["train", str(run / "recipe.yaml"), "--train.output_dir", str(run), *flags])
    return code, _error_lines(capsys)


def _error_lines(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return re.findall(r"error: [^\r\n]*", err)  # (an open progress bar may precede it on its line)


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_resume_skips_a_damaged_newest_checkpoint_and_repairs_the_run_folder(run, capsys, caplog):
    _truncate(run / "checkpoint-4" / "trainable.safetensors")
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 5, "loss": 0.')  # a killed run's half-written line
    leftover = run / f".checkpoint-6.tmp-{_dead_pid()}"
    leftover.mkdir()
    (leftover / "optimizer.pt").write_bytes(b"\0" * 1000)
    with caplog.at_level(logging.INFO, logger="vlmforge"):
        code, errors = _train(run, capsys, "--resume")
    assert code == 0 and errors == []
    damaged = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert damaged == [damaged[0]] and "checkpoint-4 is damaged (trainable.safetensors has" in damaged[0]
    assert "resuming from checkpoint-2" in damaged[0]
    assert any("resumed from" in r.getMessage() and "(step 2)" in r.getMessage() for r in caplog.records)
    assert checkpoint_problem(run / "checkpoint-4") is None  # written again by the resumed run
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert not leftover.exists()


def test_resume_with_no_intact_checkpoint_is_one_line(run, capsys):
    _truncate(run / "checkpoint-4" / "trainable.safetensors", 0)
    (run / "checkpoint-2" / "rng.pt").unlink()
    code, errors = _train(run, capsys, "--resume")
    assert code == 2 and len(errors) == 1
    assert "no intact checkpoint" in errors[0] and "checkpoint-2 is damaged (rng.pt is missing)" in errors[0]


@pytest.mark.parametrize("flags, named", [(("--lora.rank", "8"), "lora.rank = 4, this run has 8"),
                                          (("--trainable.projector", "frozen"), "trainable.projector = 'full', this run has 'frozen'"),
                                          (("--lora.target_modules", "q_proj"), "lora.target_modules = [], this run has ['q_proj']")])
def test_resume_with_an_incompatible_recipe_names_the_difference(run, capsys, flags, named):
    code, errors = _train(run, capsys, "--resume", *flags)
    assert code == 2 and len(errors) == 1 and named in errors[0], errors


def test_resume_refuses_tensors_of_another_shape_even_when_the_recipe_was_edited(run, capsys):
    """Someone edited the saved recipe.yaml (and its manifest) to rank 8: the shapes still say 4."""
    (run / "checkpoint-4" / "recipe.yaml").write_text((run / "checkpoint-4" / "recipe.yaml").read_text().replace("rank: 4", "rank: 8"))
    write_manifest(run / "checkpoint-4")
    code, errors = _train(run, capsys, "--resume", "--lora.rank", "8")
    assert code == 2 and len(errors) == 1
    assert "in checkpoint-4 but" in errors[0] and "lora.rank" in errors[0]


class Payload:
    pass


def test_resume_with_a_pickled_optimizer_file_says_what_to_do(run, capsys):
    with open(run / "checkpoint-4" / "optimizer.pt", "wb") as handle:
        pickle.dump({"state": Payload()}, handle, protocol=2)
    write_manifest(run / "checkpoint-4")
    code, errors = _train(run, capsys, "--resume")
    assert code == 2 and len(errors) == 1
    assert "optimizer.pt holds pickled Python objects" in errors[0] and "Resume from another checkpoint" in errors[0]


def test_disk_full_while_saving_stops_in_one_line_and_resume_continues(tiny_vlm_dir, data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "full"
    recipe = tmp_path / "recipe.yaml"
    save_yaml(tiny_recipe(tiny_vlm_dir, data, run, max_steps=4, save_steps=2), recipe)
    real, calls = torch.save, {"n": 0}

    def fills_up_at_checkpoint_4(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:  # checkpoint-2: optimizer.pt, rng.pt
            return real(obj, handle, *args, **kwargs)
        handle.write(b"\0" * 4096)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", fills_up_at_checkpoint_4)
    assert main(["train", str(recipe)]) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and "no space left on the file system at" in errors[0]
    assert "while writing checkpoint-4; checkpoint-2 is intact" in errors[0]
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name) == ["checkpoint-2", "checkpoint-latest"]
    monkeypatch.undo()
    assert main(["train", str(recipe), "--resume"]) == 0
    assert _error_lines(capsys) == []
    assert checkpoint_problem(run / "checkpoint-4") is None and os.readlink(run / "checkpoint-latest") == "checkpoint-4"
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_export_of_a_truncated_checkpoint_is_one_line_exit_2(run, tmp_path, capsys):
    _truncate(run / "checkpoint-4" / "trainable.safetensors")
    assert main(["export", str(run / "checkpoint-latest"), "--out", str(tmp_path / "merged")]) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and "checkpoint-4 is damaged: trainable.safetensors has" in errors[0]
    assert "checkpoint-2 is intact" in errors[0]
    assert not (tmp_path / "merged").exists()
    assert main(["export", str(run / "nothing-here"), "--out", str(tmp_path / "merged")]) == 2
    assert len(_error_lines(capsys)) == 1


def test_export_of_a_checkpoint_whose_recipe_no_longer_fits_its_weights_is_one_line(run, tmp_path, capsys):
    recipe = run / "checkpoint-4" / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("rank: 4", "rank: 8"))
    write_manifest(run / "checkpoint-4")
    assert main(["export", str(run / "checkpoint-4"), "--out", str(tmp_path / "merged")]) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and "in checkpoint-4 but" in errors[0] and "lora.rank" in errors[0]


def test_a_full_disk_anywhere_else_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """E.g. the final export of a finished run, or `data convert --out` on a full disk."""
    import vlmforge.train.export as export
    from safetensors import SafetensorError

    def full(checkpoint, out):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(export, "export_checkpoint", full)
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "merged")]) == 2
    errors = _error_lines(capsys)
    assert errors == ["error: no space left on device; free some space and run the command again (a training run "
                      "continues from its last checkpoint with --resume)"]

    def other(checkpoint, out):
        raise RuntimeError("a bug, not the user's disk")

    monkeypatch.setattr(export, "export_checkpoint", other)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["export", str(tmp_path), "--out", str(tmp_path / "merged")])


def _pickled_copy(folder, out):
    """`folder` with its model.safetensors replaced by a .bin pickle that names a class of ours."""
    from safetensors.torch import load_file

    shutil.copytree(folder, out)
    weights = dict(load_file(out / "model.safetensors"))
    (out / "model.safetensors").unlink()
    weights["extra"] = Payload()
    torch.save(weights, out / "pytorch_model.bin")
    return out


def test_a_pickled_bin_model_is_one_line_that_says_what_to_do(tiny_vlm_dir, tiny_parts, tmp_path, capsys):
    from vlmforge.errors import ModelError
    from vlmforge.model.load import load

    vlm = _pickled_copy(tiny_vlm_dir, tmp_path / "vlm")
    with pytest.raises(ModelError, match="pickled .bin weights file.*weights_only=True.*safetensors"):
        load(vlm)
    llm = _pickled_copy(tiny_parts["qwen2"], tmp_path / "llm")
    assert main(["build", "--vision", str(tiny_parts["siglip"]), "--llm", str(llm), "--out", str(tmp_path / "out")]) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and "pickled Python objects" in errors[0] and "Payload" in errors[0]


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MB tmpfs (needs root; skipped where mounting is not allowed), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_real_full_disk_stops_in_one_line_and_resume_finishes(tiny_vlm_dir, data, tmp_path, small_disk, capsys):
    """The same as the monkeypatched test above, with the kernel's ENOSPC from a nearly full tmpfs."""
    run, recipe = small_disk / "run", tmp_path / "recipe.yaml"
    save_yaml(tiny_recipe(tiny_vlm_dir, data, run, max_steps=4, save_steps=1, save_total_limit=5), recipe)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 300_000))  # room for about two checkpoints
    assert main(["train", str(recipe)]) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1, errors
    found = re.fullmatch(r"error: no space left on the file system at .* while writing checkpoint-(\d); "
                         r"checkpoint-(\d) is intact: free some space, then continue with --resume", errors[0])
    assert found and int(found[1]) == int(found[2]) + 1, errors
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # the partial folder is gone
    filler.unlink()
    assert main(["train", str(recipe), "--resume"]) == 0
    assert checkpoint_problem(run / "checkpoint-4") is None
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
