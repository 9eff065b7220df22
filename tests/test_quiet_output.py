"""A command's output is its own progress and results: no transformers progress bars, advice or
FutureWarnings from the libraries underneath (they come back with `-v`)."""

import subprocess
import sys

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
