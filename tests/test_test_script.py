"""scripts/test.sh (what CI runs) and scripts/demo.sh, on a copy of the scripts with stand-ins for
`.venv/bin/python` (whose "pytest" exits as told) and `.venv/bin/vlmforge`.

test.sh: both suites always run, both results are reported, and the exit status fails when either
suite failed; pytest's "no test selected" (exit 5, under -k) is no failure.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAKE_PYTHON = """#!/usr/bin/env bash
case "$*" in
  "-c import playwright") exit 0 ;;
  *"-m not slow"*) echo "fast suite ran"; exit "$FAST" ;;
  *"-m slow"*) echo "slow suite ran"; exit "$SLOW" ;;
esac
exit 0
"""


@pytest.fixture
def repo_copy(tmp_path):
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    (tmp_path / "scripts" / "install-browser.sh").write_text("#!/usr/bin/env bash\necho stand-in install\n")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    (tmp_path / ".venv" / ".vlmforge-installed").touch()  # setup.sh: already installed
    return tmp_path


@pytest.mark.parametrize("fast, slow, status, summary", [
    (0, 0, 0, "fast tests: passed; slow end-to-end tests: passed"),
    (1, 0, 1, "fast tests: FAILED (pytest exit 1); slow end-to-end tests: passed"),
    (0, 2, 2, "fast tests: passed; slow end-to-end tests: FAILED (pytest exit 2)"),
    (5, 0, 0, "fast tests: no test selected; slow end-to-end tests: passed"),
    (0, 5, 0, "fast tests: passed; slow end-to-end tests: no test selected"),
    (5, 5, 5, "fast tests: no test selected; slow end-to-end tests: no test selected"),
])
def test_both_suites_run_and_both_results_count(repo_copy, fast, slow, status, summary):
    env = {**os.environ, "FAST": str(fast), "SLOW": str(slow)}
    result = subprocess.run(["bash", str(repo_copy / "scripts" / "test.sh")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == status, result.stdout + result.stderr
    assert "fast suite ran" in result.stdout and "slow suite ran" in result.stdout  # a failing fast suite too
    assert result.stdout.splitlines()[-1] == f"== {summary}"


def test_ci_runs_exactly_the_readme_test_command():
    lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[-1] == "exec scripts/test.sh"


def test_demo_script_runs_the_demo_in_the_callers_folder(repo_copy, tmp_path_factory):
    """scripts/demo.sh stays where the user stands, so the paths the demo prints work there."""
    vlmforge = repo_copy / ".venv" / "bin" / "vlmforge"
    vlmforge.write_text('#!/usr/bin/env bash\necho "$PWD"\necho "$*"\n')
    vlmforge.chmod(0o755)
    user = tmp_path_factory.mktemp("user")
    result = subprocess.run(["bash", str(repo_copy / "scripts" / "demo.sh"), "--fast"], cwd=user,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(user), "demo --fast"]
