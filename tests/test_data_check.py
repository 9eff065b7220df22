"""`data check`: every planted problem found with file:line, stats per source, lengths with a model."""

import json
import shutil
from pathlib import Path

import pytest

from data_helpers import make_processor_folder
from vlmforge.data.check import CheckOptions, check_files, format_check_report
from vlmforge.errors import ConfigError, ModelError

FIXTURES = Path(__file__).parent / "fixtures" / "data"

PLANTED = {
    (2, "missing-image"),
    (3, "undecodable-image"),
    (4, "truncated-image"),
    (5, "oversized-image"),
    (6, "placeholder-mismatch"),
    (7, "empty-role"),
    (8, "unknown-role"),
    (9, "not-alternating"),
    (10, "untrainable-assistant"),
    (11, "bad-json"),
}


@pytest.fixture()
def planted(tmp_path):
    shutil.copytree(FIXTURES / "images", tmp_path / "images")
    shutil.copy(FIXTURES / "check_planted.jsonl", tmp_path / "data.jsonl")
    return tmp_path / "data.jsonl"


def test_every_planted_problem_is_found_at_its_line(planted):
    report = check_files([planted], CheckOptions(workers=2))
    assert {(problem.line, problem.kind) for problem in report.problems} == PLANTED
    assert all(problem.path == str(planted) for problem in report.problems)
    assert not report.ok


def test_stats_per_source(planted):
    report = check_files([planted])
    planted_stats, other = report.sources["planted"], report.sources["other"]
    assert (planted_stats.records, planted_stats.images, planted_stats.text_only, planted_stats.turns) == (11, 6, 5, 10)
    assert (other.records, other.images, other.text_only, other.turns, other.problems) == (2, 3, 0, 2, 0)
    assert report.lengths is None


def test_clean_file_and_image_roots(tmp_path, planted):
    lines = planted.read_text(encoding="utf-8").splitlines()
    clean = tmp_path / "clean" / "data.jsonl"
    clean.parent.mkdir()
    clean.write_text("\n".join([lines[0], lines[11], lines[13]]) + "\n", encoding="utf-8")
    assert {p.kind for p in check_files([clean]).problems} == {"missing-image"}  # images are not next to this file
    report = check_files([clean], CheckOptions(image_roots=[tmp_path]))
    assert report.ok and "no problems found" in format_check_report(report)


def test_json_report_is_machine_readable(planted):
    data = json.loads(json.dumps(check_files([planted]).to_dict()))
    assert data["ok"] is False
    assert data["problem_counts"]["unknown-role"] == 2
    assert {"kind", "reason", "path", "line", "record"} <= set(data["problems"][0])


def test_with_model_lengths_after_image_expansion_and_too_long(tmp_path, planted):
    model = make_processor_folder(tmp_path / "model", image_side=32, patch_size=8)  # 16 tokens per image
    report = check_files([planted], CheckOptions(model_dir=model, max_length=60))
    assert report.image_tokens_per_image == 16
    assert report.lengths["count"] == 8  # records whose structure is valid (lines 1-5, 12, 14, 15)
    assert report.lengths["max"] > 60 >= report.lengths["min"]
    too_long = {p.line for p in report.problems if p.kind == "too-long"}
    assert too_long and too_long <= {1, 2, 3, 4, 5, 12, 14, 15}
    assert report.over_max_length == len(too_long)
    expected = f"{len(too_long)} of 8 records are longer than --max-length = 60 tokens (longest: {report.lengths['max']})"
    assert expected in format_check_report(report)


def test_option_errors(tmp_path, planted):
    with pytest.raises(ConfigError, match="needs --model"):
        check_files([planted], CheckOptions(max_length=10))
    with pytest.raises(ModelError, match="not found"):
        check_files([planted], CheckOptions(model_dir=tmp_path / "nope"))
