"""A command's output is its own progress and results: no transformers progress bars, advice or
FutureWarnings from the libraries underneath (they come back with `-v`)."""

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


def test_serve_announces_itself_once(tiny_vlm_dir):
    """One start-up line with the URL (vlmforge's, once the model is loaded; uvicorn's repeats are dropped),
    then the request log."""
    import socket
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "vlmforge", "serve", str(tiny_vlm_dir), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.3)
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    url = f"http://127.0.0.1:{port}"
    assert [line for line in output.splitlines() if url in line] == [f"serving tiny-vlm at {url} (chat page at /)"], \
        output
    assert '"GET /health HTTP/1.1" 200' in output  # the request log stays
