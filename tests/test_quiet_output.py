"""A command's output is its own progress and results: no transformers progress bars, advice or
FutureWarnings from the libraries underneath (they come back with `-v`)."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest

NOISE = ("Loading weights", "Writing model shards", "FutureWarning", "[transformers]")


def vlmforge(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmforge", *argv], capture_output=True, text=True, timeout=300)


def test_build_prints_its_own_lines_only_and_verbose_brings_the_libraries_back(tiny_parts, tmp_path):
    parts = ["--vision", str(tiny_parts["siglip"]), "--llm", str(tiny_parts["qwen2"])]
    quiet = vlmforge("build", *parts, "--out", str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr
    output = quiet.stdout + quiet.stderr
    assert [noise for noise in NOISE if noise in output] == [], output
    assert "wrote " in quiet.stdout and "image tokens per image" in quiet.stdout

    verbose = vlmforge("-v", "build", *parts, "--out", str(tmp_path / "verbose"))
    assert verbose.returncode == 0, verbose.stderr
    assert "Loading weights" in verbose.stderr  # the noise is real here; only the default hides it


@pytest.mark.parametrize("rank, reports", [("0", 1), ("1", 0)])
def test_train_reports_once_under_torchrun_or_accelerate(monkeypatch, capsys, rank, reports):
    """Every rank runs the command; only rank 0 prints the final line."""
    import vlmforge.train.loop as loop
    from vlmforge.cli import main

    monkeypatch.setattr(loop, "train", lambda recipe, **kwargs: loop.TrainResult(Path("run"), 3, 0.5, None))
    monkeypatch.setenv("RANK", rank)
    assert main(["train", "demo-align"]) == 0
    assert capsys.readouterr().out.count("trained 3 steps") == reports


def test_serve_announces_itself_once(monkeypatch, capsys, caplog, tiny_vlm_dir):
    import vlmforge.infer.server as server
    from vlmforge.cli import main

    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kwargs: None)  # load the model, log, return
    caplog.set_level(logging.INFO, logger="vlmforge")
    assert main(["serve", str(tiny_vlm_dir), "--port", "8123"]) == 0
    said = capsys.readouterr().out.splitlines() + caplog.messages
    assert [line for line in said if "http://127.0.0.1:8123" in line] == [
        "serving tiny-vlm at http://127.0.0.1:8123 (chat page at /)"], said
