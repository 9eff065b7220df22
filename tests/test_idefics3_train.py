"""Training a tiny `--arch idefics3` model on CPU: trainability by part, exact resume, export with LoRA merged, native load."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from train_helpers import COLOURS, shipped_recipe
from vlmforge.train.loop import train

SIZES = [(32, 32), (100, 40), (30, 90), (20, 12)]  # one tile, wide, tall, smaller than a tile


@pytest.fixture(scope="module")
def idefics3_dir(tiny_parts, tmp_path_factory):
    from vlmforge.model.build import BuildConfig, build_vlm, save_vlm

    model, processor = build_vlm(BuildConfig(vision=str(tiny_parts["siglip"]), llm=str(tiny_parts["qwen2"]),
                                             arch="idefics3", pixel_shuffle=2))
    return save_vlm(model, processor, tmp_path_factory.mktemp("idefics3") / "vlm")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Colour questions on images of four sizes (one and two images a record), text-only records mixed in."""
    folder = tmp_path_factory.mktemp("colours")
    names, lines = list(COLOURS), []
    for index in range(16):
        name = names[index % len(names)]
        Image.new("RGB", SIZES[index % len(SIZES)], COLOURS[name]).save(folder / f"{index}.png")
        images = [f"{index}.png"] + ([f"{index - 1}.png"] if index % 5 == 4 else [])
        question = "<image>\n" * len(images) + "What colour is this?"
        lines.append({"images": images, "messages": [{"role": "user", "content": question},
                                                     {"role": "assistant", "content": name}]})
        if index % 4 == 0:
            lines.append({"messages": [{"role": "user", "content": "Say hello."},
                                       {"role": "assistant", "content": "Hello there!"}]})
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _recipe(model, data, run, **train):
    settings = dict(max_steps=4, batch_size=2, grad_accum=2, save_steps=2, log_steps=1, seed=3)
    settings.update(train)
    return shipped_recipe("instruct-lora", model, data, run, **settings)


def test_instruct_lora_trains_connector_and_lora_only_then_exports_natively(idefics3_dir, data, tmp_path):
    result = train(_recipe(idefics3_dir, data, tmp_path / "run", export=True))
    trainable = load_file(tmp_path / "run" / "checkpoint-latest" / "trainable.safetensors")
    assert any("lora_A" in name for name in trainable) and any(".connector." in name for name in trainable)
    assert not any(".vision_model." in name for name in trainable)
    assert all(".text_model." in name for name in trainable if "lora_" in name)  # LoRA on the text model only
    before = load_file(Path(idefics3_dir) / "model.safetensors")
    after = load_file(Path(result.final_model) / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any(".connector." in name for name in changed)
    assert any(".text_model." in name and "proj" in name for name in changed)  # LoRA merged
    assert not any(".vision_model." in name or "embed_tokens" in name or "norm" in name for name in changed)

    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmforge.model.load import load

    native = AutoModelForImageTextToText.from_pretrained(result.final_model).eval()
    processor = AutoProcessor.from_pretrained(result.final_model)
    assert type(native).__name__ == "Idefics3ForConditionalGeneration"
    inputs = processor(text="<image>\nWhat colour is this?", images=[Image.new("RGB", (100, 40), COLOURS["red"])],
                       return_tensors="pt")
    ours, _ = load(result.final_model)
    with torch.no_grad():
        torch.testing.assert_close(native(**inputs).logits, ours(**inputs).logits, rtol=0, atol=0)


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(idefics3_dir, data, tmp_path):
    whole = tmp_path / "whole"
    train(_recipe(idefics3_dir, data, whole))
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed, symlinks=True)
    shutil.rmtree(resumed / "checkpoint-4")  # as if killed after step 2's checkpoint
    os.unlink(resumed / "checkpoint-latest")
    os.symlink("checkpoint-2", resumed / "checkpoint-latest")
    result = train(_recipe(idefics3_dir, data, resumed), resume=True)
    assert [row["step"] for row in result.history] == [3, 4]
    a, b = (load_file(run / "checkpoint-latest" / "trainable.safetensors") for run in (whole, resumed))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_align_trains_the_connector_only(idefics3_dir, data, tmp_path):
    train(shipped_recipe("align", idefics3_dir, data, tmp_path / "run", max_steps=2, batch_size=2, grad_accum=1,
                         save_steps=2, log_steps=1))
    trainable = load_file(tmp_path / "run" / "checkpoint-latest" / "trainable.safetensors")
    assert trainable and all(name.startswith("model.connector.") for name in trainable)


@pytest.mark.slow
def test_cli_flow_build_align_instruct_export_native_load_chat(tiny_parts, data, tmp_path, capsys):
    """The whole user flow of --arch idefics3 through the CLI, as the README shows it."""
    from vlmforge.cli import main

    model = tmp_path / "vlm"
    assert main(["build", "--vision", str(tiny_parts["siglip"]), "--llm", str(tiny_parts["llama"]), "--out", str(model),
                 "--arch", "idefics3", "--pixel-shuffle", "2", "--tile-size", "32"]) == 0
    common = ["--data.paths", str(data), "--train.max-steps", "2", "--train.batch_size", "2", "--train.grad_accum", "1",
              "--train.save_steps", "2", "--train.device", "cpu", "--train.precision", "fp32"]
    assert main(["train", "align", "--model.path", str(model), "--train.output_dir", str(tmp_path / "align"), *common]) == 0
    aligned = tmp_path / "align" / "final"
    assert (aligned / "config.json").exists()
    sft = tmp_path / "sft"
    assert main(["train", "instruct-lora", "--model.path", str(aligned), "--train.output_dir", str(sft), *common,
                 "--no-train.export"]) == 0
    assert main(["export", str(sft / "checkpoint-latest"), "--out", str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForImageTextToText

    native = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    assert type(native).__name__ == "Idefics3ForConditionalGeneration"
    Image.new("RGB", (100, 40), COLOURS["blue"]).save(tmp_path / "wide.png")
    capsys.readouterr()
    assert main(["chat", str(tmp_path / "merged"), "--image", str(tmp_path / "wide.png"), "--prompt", "What colour?",
                 "--max-new-tokens", "3"]) == 0


def test_gradient_checkpointing_gives_the_same_losses(idefics3_dir, data, tmp_path):
    histories = []
    for checkpointing in (False, True):
        recipe = _recipe(idefics3_dir, data, tmp_path / f"run-{checkpointing}", max_steps=2, grad_accum=1)
        recipe.lora.dropout = 0.0  # dropout masks would differ between the recomputed and the plain forward
        recipe.train.gradient_checkpointing = checkpointing
        histories.append([row["loss"] for row in train(recipe).history])
    assert histories[0] == histories[1] and len(histories[0]) == 2
