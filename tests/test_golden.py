"""Golden values: token ids, label masks and a tiny run's losses pinned in tests/fixtures/golden/.

Every other test compares vlmforge with itself (grad-accum 1×4 vs 4×1, resumed vs uninterrupted,
training prefix vs inference prompt); a change that moves both sides alike (a label shift, the LR
schedule, batch order, loss normalisation) passes them all. These compare with stored numbers.
After an intended numeric change, regenerate (the command is at the top of each JSON file) and
review the JSON diff.
"""

import json

import pytest

from golden_helpers import LOSSES_FILE, REGENERATE, TOKENS_FILE, build_tiny_vlm, run_rows, token_cases

# Loss tolerance. The run is fp32 on CPU, but matmul and reduction kernels differ between CPU kinds
# (AVX2 vs AVX-512 / AMX: other summation orders), so losses may differ in the last bits: expected
# ~1e-7 relative per step on a model this small, well below 1e-5 after four AdamW steps (not measured
# across CPU kinds; 1 vs 2 threads gave identical bits on one CPU). 2e-5 leaves that headroom and
# still sees a real change: moving the shipped warm-up (0 of 4 steps) to 2 steps shifts the losses of
# steps 2-3 by 2.7e-4 / 1.8e-4 relative (`test_loss_tolerance_sees_a_warmup_change`).
LOSS_RTOL = 2e-5


def _stored(path):
    return json.loads(path.read_text(encoding="utf-8"))["values"]


def test_token_ids_and_label_masks_match_the_golden_conversations():
    stored, current = _stored(TOKENS_FILE), token_cases()
    assert stored.keys() == current.keys()
    for name, case in current.items():
        assert case["marked"] == stored[name]["marked"], f"{name}: rendered/trained text moved ({REGENERATE})"
        assert case["input_ids"] == stored[name]["input_ids"], f"{name}: token ids moved ({REGENERATE})"
        assert case["labels"] == stored[name]["labels"], f"{name}: label mask moved ({REGENERATE})"


def test_golden_cases_cover_both_templates_and_every_kind_of_turn():
    stored = _stored(TOKENS_FILE)
    assert {name.split("/")[0] for name in stored} == {"chatml", "llama3"}
    for case in stored.values():
        trained = [label != -100 for label in case["labels"]]
        assert any(trained) and not all(trained)
        assert case["marked"].count("⟦") == 2  # two assistant turns in every conversation


@pytest.fixture(scope="module")
def golden_model(tmp_path_factory):
    """Built here from configs with fixed seeds, not shared with other tests, so no other fixture moves the golden."""
    return build_tiny_vlm(tmp_path_factory.mktemp("golden-model"))


def _assert_rows_match(rows, stored):
    assert [row["step"] for row in rows] == [row["step"] for row in stored] == [1, 2, 3, 4]
    for row, golden in zip(rows, stored):
        assert row["lr_projector"] == pytest.approx(golden["lr_projector"], rel=1e-12), row["step"]
        assert row["lr_llm"] == pytest.approx(golden["lr_llm"], rel=1e-12), row["step"]
        assert row["pad_fraction"] == pytest.approx(golden["pad_fraction"], rel=1e-12), row["step"]
        assert row["loss"] == pytest.approx(golden["loss"], rel=LOSS_RTOL), row["step"]


def test_loss_series_of_the_shipped_lora_recipe_matches_the_golden(golden_model, tmp_path):
    _assert_rows_match(run_rows(golden_model, tmp_path), _stored(LOSSES_FILE))


def test_loss_tolerance_sees_a_warmup_change(golden_model, tmp_path):
    """Guards the tolerance itself: a schedule change must fail the comparison through the losses alone."""
    rows, stored = run_rows(golden_model, tmp_path, warmup_ratio=0.5), _stored(LOSSES_FILE)
    moved = [abs(row["loss"] - golden["loss"]) / golden["loss"] for row, golden in zip(rows, stored)]
    assert max(moved) > 5 * LOSS_RTOL, moved
    with pytest.raises(AssertionError):
        _assert_rows_match(rows, stored)
