"""Does reading images as tiles matter? Llava at the tower's size against Idefics3 tiles, on small details.

    python scripts/compare_tiling.py --vision SIGLIP_DIR --llm LLM_DIR --out runs/tiling \\
        --scene-size 768 --tile-size 384 --pixel-shuffle 3 --longest-edge 768 --steps 600 --device cuda

A synthetic task where detail matters, generated offline: 768 x 768 scenes of small coloured
clutter with a short digit string written in a small font at a random place; the question asks for
the number. Both models are built from the same tower and LM (`vlmforge build --arch llava` /
`--arch idefics3`), trained with the same recipe, steps, batch and learning rates, and evaluated
by exact match on held-out scenes. Written to OUT/comparison.md (a table) and OUT/comparison.json:
accuracy, image tokens per sample, training tokens/s.

Smoke run on CPU with tiny parts (checks the script, measures nothing):
    python scripts/compare_tiling.py --tiny --out /tmp/tiling --scene-size 256 --tile-size 64 \\
        --longest-edge 128 --pixel-shuffle 2 --steps 2 --train 16 --test 4 --batch 2 --device cpu
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

QUESTION = "What number is written in the picture?"


def draw_scene(rng: random.Random, size: int) -> tuple[Image.Image, str]:
    """A light scene with small clutter and a 3-digit number in a small font; returns (image, number)."""
    image = Image.new("RGB", (size, size), (235, 235, 230))
    draw = ImageDraw.Draw(image)
    for _ in range(size // 24):  # clutter: small boxes and discs
        x, y, side = rng.randrange(size), rng.randrange(size), rng.randrange(4, max(5, size // 40))
        colour = tuple(rng.randrange(60, 220) for _ in range(3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x, y, x + side, y + side), fill=colour)
    number = f"{rng.randrange(100, 1000)}"
    font = ImageFont.load_default(size=max(8, size // 48))  # ~16 px at 768: readable at full size, not at 384
    x, y = rng.randrange(size // 10, size * 8 // 10), rng.randrange(size // 10, size * 9 // 10)
    draw.text((x, y), number, fill=(20, 20, 20), font=font)
    return image, number


def write_split(folder: Path, name: str, count: int, size: int, seed: int) -> Path:
    rng = random.Random(f"{seed}-{name}")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        image, number = draw_scene(rng, size)
        path = f"images/{name}-{index}.png"
        image.save(folder / path)
        lines.append({"id": f"{name}{index}", "images": [path], "messages": [
            {"role": "user", "content": f"<image>\n{QUESTION}"}, {"role": "assistant", "content": number}]})
    out = folder / f"{name}.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out


def tiny_parts(folder: Path, image_size: int) -> tuple[str, str]:
    from vlmforge.model.tiny import make_tiny_llm, make_tiny_vision

    vision = make_tiny_vision(folder / "vision", "siglip", image_size=image_size, patch_size=16)
    return str(vision), str(make_tiny_llm(folder / "llm", "qwen2"))


def build(args, arch: str, out: Path) -> Path:
    from vlmforge.model.build import BuildConfig, build_vlm, save_vlm

    extra = dict(pixel_shuffle=args.pixel_shuffle, tile_size=args.tile_size, longest_edge=args.longest_edge)
    model, processor = build_vlm(BuildConfig(vision=args.vision, llm=args.llm, arch=arch,
                                             **(extra if arch == "idefics3" else {})))
    return save_vlm(model, processor, out)


def train_model(args, model_dir: Path, data: Path, run: Path):
    from vlmforge.train.loop import train
    from vlmforge.train.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    recipe.model.path, recipe.data.paths = str(model_dir), [str(data)]
    for key, value in dict(output_dir=str(run), max_steps=args.steps, batch_size=args.batch, grad_accum=1,
                           device=args.device, export=True, save_steps=args.steps, log_steps=1, seed=args.seed).items():
        setattr(recipe.train, key, value)
    if args.device == "cpu":
        recipe.train.precision = "fp32"
    return train(recipe)


def image_tokens_per_sample(processor, data: Path) -> float:
    """Mean image tokens (the `<image>` id) per record, from the image headers."""
    from vlmforge.data.image_tokens import TiledImageTokens, image_tokens_for

    tokens = image_tokens_for(processor)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    counts = []
    for line in data.read_text().splitlines():
        record = json.loads(line)
        if not isinstance(tokens, TiledImageTokens):
            counts.append(tokens * len(record["images"]))
            continue
        sizes = [Image.open(data.parent / path).size for path in record["images"]]
        counts.append(sum(tokens.ids(*size).count(image_id) for size in sizes))
    return statistics.mean(counts)


def accuracy(model_dir: Path, test: Path, batch: int, device: str) -> float:
    from vlmforge.infer.chat import answer_records
    from vlmforge.infer.generate import GenerationOptions
    from vlmforge.model.load import load

    model, processor = load(model_dir, device=None if device == "cpu" else device)
    records = [json.loads(line) for line in test.read_text().splitlines()]
    answers = answer_records(model, processor, records, GenerationOptions(max_new_tokens=6), batch_size=batch,
                             image_roots=[test.parent])
    truth = [record["messages"][-1]["content"] for record in records]
    return sum(answer["prediction"].strip() == expected for answer, expected in zip(answers, truth)) / len(truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", default="")
    parser.add_argument("--llm", default="")
    parser.add_argument("--tiny", action="store_true", help="tiny random parts: a smoke run of the script")
    parser.add_argument("--out", required=True)
    parser.add_argument("--scene-size", type=int, default=768)
    parser.add_argument("--tile-size", type=int, default=None)
    parser.add_argument("--pixel-shuffle", type=int, default=3)
    parser.add_argument("--longest-edge", type=int, default=768)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--recipe", default="instruct-lora")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    if args.tiny:
        args.vision, args.llm = tiny_parts(out / "parts", args.tile_size or 64)
    data = out / "data"
    train_path = write_split(data, "train", args.train, args.scene_size, args.seed)
    test_path = write_split(data, "test", args.test, args.scene_size, args.seed)
    rows = {}
    for arch in ("llava", "idefics3"):
        from vlmforge.model.load import load

        model_dir = build(args, arch, out / arch / "model")
        result = train_model(args, model_dir, train_path, out / arch / "run")
        speeds = [row["tokens_per_s"] for row in result.history[1:] if "tokens_per_s" in row] or [float("nan")]  # step 1 warms up
        _, processor = load(model_dir)
        rows[arch] = {"accuracy": accuracy(result.final_model, test_path, args.batch, args.device),
                      "image_tokens_per_sample": image_tokens_per_sample(processor, test_path),
                      "train_tokens_per_s": statistics.median(speeds)}
    (out / "comparison.json").write_text(json.dumps({"settings": vars(args), "results": rows}, indent=2) + "\n")
    table = ["| arch | accuracy | image tokens / sample | training tokens/s |", "|---|---|---|---|"]
    table += [f"| {arch} | {row['accuracy']:.1%} | {row['image_tokens_per_sample']:.0f} | {row['train_tokens_per_s']:.0f} |"
              for arch, row in rows.items()]
    (out / "comparison.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
