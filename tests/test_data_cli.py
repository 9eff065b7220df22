"""`vlmforge data convert | check | synth` through `vlmforge.cli.main`: output files and exit codes."""

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from vlmforge.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def test_convert_writes_golden_and_exits_1_when_records_were_left_out(tmp_path, capsys):
    out = tmp_path / "mix.jsonl"
    code = main(["data", "convert", "--from", "llava", str(FIXTURES / "sources/llava_v1_5_mix665k.json"),
                 "--out", str(out), "--json", str(tmp_path / "report.json")])
    assert code == 1
    assert out.read_text(encoding="utf-8") == (FIXTURES / "expected/llava_v1_5_mix665k.jsonl").read_text(encoding="utf-8")
    assert "llava_v1_5_mix665k.json:95 [record 5]" in capsys.readouterr().out
    assert json.loads((tmp_path / "report.json").read_text())["records"] == 5


def test_convert_clean_input_exits_0_and_takes_roots(tmp_path):
    out = tmp_path / "detail.jsonl"
    code = main(["data", "convert", "--from", "llava", str(FIXTURES / "sources/detail_23k.json"), "--out", str(out),
                 "--image-root", str(tmp_path), "--image-root", str(FIXTURES / "images/coco/train2017"), "--check-images"])
    assert code == 0
    images = [json.loads(line)["images"][0] for line in out.read_text().splitlines()]
    assert images == [str(FIXTURES / "images/coco/train2017" / name) for name in ("000000000139.jpg", "000000000285.jpg")]


def test_check_exit_codes_and_json(tmp_path, capsys):
    shutil.copytree(FIXTURES / "images", tmp_path / "images")
    planted = shutil.copy(FIXTURES / "check_planted.jsonl", tmp_path / "planted.jsonl")
    assert main(["data", "check", str(planted), "--json", str(tmp_path / "r.json")]) == 1
    assert f"{planted}:5: oversized image" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["problem_counts"]["bad-json"] == 1
    clean = tmp_path / "clean.jsonl"
    clean.write_text(Path(planted).read_text().splitlines()[0] + "\n")
    assert main(["data", "check", str(clean)]) == 0
    assert main(["data", "check", str(tmp_path / "missing.jsonl")]) == 2  # user error: message, no traceback
    assert "error: file(s) not found" in capsys.readouterr().err


def test_synth_passes_only_the_given_sizes(tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("vlmforge.data.synth")
    fake.write_synthetic_dataset = lambda out_dir, **kwargs: calls.append((out_dir, kwargs)) or {"train": 4}
    monkeypatch.setitem(sys.modules, "vlmforge.data.synth", fake)
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--seed", "3", "--num-train", "4", "--image-size", "32"]) == 0
    assert calls == [(str(tmp_path / "s"), {"seed": 3, "num_train": 4, "image_size": 32})]
    assert json.loads(capsys.readouterr().out) == {"train": 4}


def test_synth_referents_flag(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["data", "synth", "--out", str(out), "--num-train", "8", "--num-val", "0", "--num-test", "8"]
    assert main(args + ["--referents", "shape, colour"]) == 0
    assert json.loads(capsys.readouterr().out)["referents"] == ["shape", "colour"]
    assert main(args + ["--referents", "shape,size"]) == 2
    assert "unknown referents ['size']" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["convert", "check", "synth"])
def test_help_is_fast_and_does_not_import_torch(action):
    code = "import sys; from vlmforge.cli import main\ntry: main(['data', %r, '--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)" % action
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().endswith("False")
    assert "usage: vlmforge data" in result.stdout
