"""Training callbacks get a small read-only `TrainingView`, never the Trainer; what they return is logged."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import tiny_recipe, write_colour_dataset  # noqa: E402

from vlmforge.train.callbacks import TrainingView  # noqa: E402


def test_callbacks_see_a_view_of_the_run_and_their_dict_is_logged(tiny_vlm_dir, tmp_path):
    from vlmforge.train.loop import train

    data = write_colour_dataset(tmp_path / "data", count=4, with_text_only=False)
    recipe = tiny_recipe(tiny_vlm_dir, data, tmp_path / "run", max_steps=2, log_steps=1, save_steps=100)
    seen = []

    def probe(view, step):
        seen.append(view)
        return {"probe_step": view.step, "probe_training": view.peft_model.training}

    train(recipe, callbacks=[probe])
    assert [type(view) for view in seen] == [TrainingView, TrainingView]
    assert [view.step for view in seen] == [1, 2]
    assert {field.name for field in dataclasses.fields(TrainingView)} == {
        "step", "peft_model", "processor", "is_main", "bf16", "output_dir"}
    view = seen[-1]
    assert view.is_main and view.bf16 is False and view.output_dir == tmp_path / "run"
    assert hasattr(view.peft_model, "peft_config") and view.processor.image_token
    assert not hasattr(view, "optimizer") and not hasattr(view, "batches")
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.step = 7
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(row["step"], row["probe_step"], row["probe_training"]) for row in rows] == [(1, 1, True), (2, 2, True)]
