"""Tiny training data and recipes shared by the training tests."""

import json

from PIL import Image

from vlmforge.train.recipe import Recipe

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}


def write_colour_dataset(folder, count=24, with_text_only=True, varied_lengths=False):
    """`count` records 'What colour is this?' → colour name, plus text-only ones; returns the JSONL path.

    `varied_lengths`: the answer repeats the name 1-7 times, so samples next to each other in a
    length-sorted batch differ in length (processes then get tensors of different sizes).
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    lines = []
    for index in range(count):
        name = names[index % len(names)]
        Image.new("RGB", (32, 32), COLOURS[name]).save(folder / f"{index}.png")
        question = "What colour is this?" if index % 3 else "Describe the colour of this picture in a word."
        lines.append({"id": f"c{index}", "images": [f"{index}.png"], "messages": [
            {"role": "user", "content": f"<image>\n{question}"},
            {"role": "assistant", "content": " ".join([name] * (1 + index % 7 if varied_lengths else 1))}]})
        if with_text_only and index % 4 == 0:
            lines.append({"id": f"t{index}", "messages": [
                {"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello there!"}]})
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def tiny_recipe(model_dir, data_path, output_dir, **train) -> Recipe:
    recipe = Recipe()
    recipe.model.path = str(model_dir)
    recipe.data.paths = [str(data_path)]
    recipe.lora.rank, recipe.lora.alpha, recipe.lora.dropout = 4, 8.0, 0.0
    recipe.train.output_dir = str(output_dir)
    recipe.train.precision = "fp32"
    recipe.train.warmup_ratio = 0.0
    recipe.train.lr.projector, recipe.train.lr.llm = 1e-3, 1e-3
    settings = dict(max_steps=4, batch_size=2, grad_accum=1, save_steps=2, log_steps=1, export=False, device="cpu")
    settings.update(train)
    for key, value in settings.items():
        setattr(recipe.train, key, value)
    return recipe


def shipped_recipe(name, model_dir, data_path, output_dir, **train) -> Recipe:
    """A shipped recipe as shipped (LoRA dropout, grad_accum, learning rates, ...), pointed at tiny data.

    Only what a tiny CPU test must set is changed: paths, device, fp32 (bit-exact comparisons), no
    export; `train` sets the schedule (max_steps, save_steps, ...).
    """
    from vlmforge.train.recipe import load_recipe

    recipe = load_recipe(name)
    recipe.model.path = str(model_dir)
    recipe.data.paths = [str(data_path)]
    recipe.train.output_dir = str(output_dir)
    settings = dict(device="cpu", precision="fp32", export=False)
    settings.update(train)
    for key, value in settings.items():
        setattr(recipe.train, key, value)
    return recipe
