"""Does reading images as tiles matter? Llava at the tower's size against Idefics3 tiles, on small details.

With real parts (a GPU run; 768 x 768 scenes with a 3-digit number in a small font among clutter):
    python scripts/compare_tiling.py --vision SIGLIP_DIR --llm LLM_DIR --out runs/tiling \\
        --scene-size 768 --tile-size 384 --pixel-shuffle 3 --longest-edge 768 --stages instruct-lora:600 --device cuda

From scratch on a CPU (what docs/high-resolution.md reports; ~13 min at one thread):
    OMP_NUM_THREADS=1 python scripts/compare_tiling.py --scratch --out runs/tiling-cpu

`--scratch` makes every part here, the way `vlmforge demo` does, with a task sized for it: 144 x 144 px
scenes whose 3 x 3 regions of 48 px hold 1-6 SMALL objects (7-10 px, random colour and shape, at a
random place inside their region); each record asks about one occupied region, in English or Chinese:
its shape ("What shape is at the top left?" / "左上是什么形状？", the detail) or its colour ("What
color is the shape at the top left?", the control: colour survives the downscale). The demo's
SigLIP tower (48 px, 16 px patches) is pre-trained per patch on 10 000 48 px tiles of such objects
(0-9 a tile: with 2 000 tiles of 0-3 it read shape at full size only ~72 % of the time) AND on whole
scenes downscaled to 48 px (so Llava's view is one it was trained on: the fairest Llava); the
demo's tiny Qwen2 LM is pre-trained by the demo's own `pretrain_language_model` (its lookup hint and
copy start) on the conversations with the image replaced by stand-in words in both families' layouts
(`lm_sample`). Llava reads the scene at 48 px (one patch per region; an object becomes a 2-3 px
blob); Idefics3 (tiles of 48 px, longest edge 144, pixel shuffle 3: one token per tile, 3 x 3 tiles
+ a global view) reads every region at full size.

Both models are built from the same parts (`build_vlm`, `--arch llava` / `--arch idefics3`), trained
with the same recipes, steps, batch and learning rates (`train`), and evaluated by exact match on
held-out scenes, with the images and with blank ones (`evaluate_model`). Written to
OUT/comparison.md (a table) and OUT/comparison.json: accuracy (exact match, per question kind), blind
accuracy, image tokens per sample, training tokens/s and samples/s, and the parts' own measures
(the tower's linear probes on tiles vs downscaled views, the LM alone on its stand-in words).

Smoke run on CPU with tiny random parts (checks the real-parts path, measures nothing):
    python scripts/compare_tiling.py --tiny --out /tmp/tiling --scene-size 256 --tile-size 64 \\
        --longest-edge 128 --pixel-shuffle 2 --stages instruct-lora:2 --train 16 --test 4 --batch 2 --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

DIGIT_QUESTION = "What number is written in the picture?"
TOWER_SIZE = 48  # the demo's tower: 16 px patches, 3 x 3 per image, one per grid cell
OBJECT_SIDES = (7, 10)  # px: shapes told apart at full size; 2-3 px blobs in a 48 px view of the 144 px scene
REGION_KINDS = ("shape_at", "colour_at")  # what a region question asks: the detail, or the control
TOWER_FEATURE_SCALE = 1 / 72  # tower features small enough that no projector outgrows the LM (`scale_tower_features`)
TOWER_TILE_OBJECTS = 9  # pre-training tiles hold 0-9 objects: ~3x the shapes a step of 0-3 gave (`tower_records`)
PROBE_IMAGES = 1500  # held-out images of each kind for the tower's probes (1 200 fit, 300 scored)
# The demo's LM and hint as this comparison was measured (8 heads of 16; the demo now uses 4 of 32, not re-run here)
LM_SETTINGS = {"hidden_size": 128, "num_layers": 2, "num_heads": 8, "lookup_heads": 6}


# ---- the digits task (real parts) ----

def draw_digit_scene(rng: random.Random, size: int) -> tuple[Image.Image, str]:
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


# ---- the small-object task (from scratch) ----

def draw_small_object(draw: ImageDraw.ImageDraw, obj, box: tuple[int, int, int, int], rng: random.Random) -> None:
    """One demo shape of 7-10 px (`OBJECT_SIDES`) at a random place inside `box` (a 16 px cell), drawn as the demo draws."""
    from vlmforge.data.synth_scenes import COLOUR_BY_NAME

    left, top, right, _ = box
    side = rng.randint(*OBJECT_SIDES)
    x, y = left + 1 + rng.randint(0, right - left - side - 2), top + 1 + rng.randint(0, right - left - side - 2)
    corners, fill = [x, y, x + side - 1, y + side - 1], COLOUR_BY_NAME[obj.colour].rgb
    if obj.shape == "circle":
        draw.ellipse(corners, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(corners, fill=fill)
    else:
        draw.polygon([(x + (side - 1) / 2, y), (x, y + side - 1), (x + side - 1, y + side - 1)], fill=fill)


def draw_region_scene(rng: random.Random, scene, tile: int = TOWER_SIZE) -> Image.Image:
    """The scene's 3 x 3 grid drawn as 3 x 3 regions of `tile` px: each object small, in a random 16 px
    cell of its region. One region is one Idefics3 tile, and one patch of Llava's `tile` px view."""
    from vlmforge.data.synth_scenes import BACKGROUND_RGB, GRID_SIZE

    cell = tile // GRID_SIZE
    image = Image.new("RGB", (GRID_SIZE * tile, GRID_SIZE * tile), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    for obj in scene:
        left = obj.col * tile + rng.randrange(GRID_SIZE) * cell
        top = obj.row * tile + rng.randrange(GRID_SIZE) * cell
        draw_small_object(draw, obj, (left, top, left + cell, top + cell), rng)
    return image


def draw_tile_scene(rng: random.Random, scene, tile: int = TOWER_SIZE) -> Image.Image:
    """A `tile` px image with the scene's objects drawn small in its 3 x 3 cells (the tower's view of a tile)."""
    from vlmforge.data.synth_scenes import BACKGROUND_RGB, cell_box

    image = Image.new("RGB", (tile, tile), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    for obj in scene:
        draw_small_object(draw, obj, cell_box(obj.row, obj.col, tile), rng)
    return image


def sample_region_scene(rng: random.Random, fewest: int = 1, most: int = 6):
    """`fewest`-`most` objects in distinct cells of the 3 x 3 grid, each of a random colour and shape
    (repeats allowed)."""
    from vlmforge.data.synth_scenes import COLOURS, SHAPES, SceneObject

    cells = rng.sample(range(9), rng.randint(fewest, most))
    return tuple(sorted(SceneObject(cell // 3, cell % 3, rng.choice(SHAPES).name, rng.choice(COLOURS).name)
                        for cell in cells))


def region_question(rng: random.Random, scene, kind: str, lang: str) -> tuple[str, str, int]:
    """(question, answer, cell) about a random object of `scene`, named by its region: "shape_at" ("What
    shape is at the top left?" / "左上是什么形状？": needs the object's shape, the detail) or "colour_at"
    ("What color is the shape at the top left?": its colour, which both views keep; the control)."""
    from vlmforge.data.synth_language import QUESTION_TEMPLATES, answer_for, position_word

    obj = rng.choice(scene)
    asked = "shape" if kind == "shape_at" else "colour"
    question = QUESTION_TEMPLATES[(asked, "position")][lang].format(position=position_word(obj.row, obj.col, lang))
    return question, answer_for(asked, scene, obj, lang), obj.row * 3 + obj.col


def write_split(folder: Path, name: str, count: int, size: int, seed: int, task: str) -> Path:
    """`count` records of `task` ("digits" or "regions") with their images under folder/images. Region
    records ask about one region each (`meta.turn_cells`: the asked cell), shape and colour questions in
    turn, English and Chinese in turn."""
    rng = random.Random(f"{seed}-{name}")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        kind, meta, lang = task, {}, "en"
        if task == "digits":
            image, answer, question = *draw_digit_scene(rng, size), DIGIT_QUESTION
        else:
            scene, kind, lang = sample_region_scene(rng), REGION_KINDS[index % 2], ("en", "zh")[index // 2 % 2]
            image = draw_region_scene(rng, scene)
            question, answer, cell = region_question(rng, scene, kind, lang)
            meta = {"objects": [obj.to_meta() for obj in scene], "turn_cells": [cell]}
        path = f"images/{name}-{index}.png"
        image.save(folder / path)
        lines.append({"id": f"{name}{index}", "images": [path], "type": kind, "lang": lang, "meta": meta,
                      "messages": [{"role": "user", "content": f"{question}\n<image>"},
                                   {"role": "assistant", "content": answer}]})
    out = folder / f"{name}.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out


def tower_records(folder: Path, task_records: list[dict], task_root: Path, count: int, seed: int,
                  name: str = "tower", most: int = 0) -> list[dict]:
    """Images for the demo tower, labelled per 3 x 3 cell: `count` tiles (48 px, small objects: what an
    Idefics3 tile shows; 0-3 of distinct shapes, or 0-`most` of any shape when `most` is given) and
    the task's scenes downscaled to 48 px (what Llava and the global view show; an object's label goes
    to its region's cell). `name` seeds the tiles: "tower" for pre-training, "probe-tiles" for the
    held-out images the probes are scored on."""
    from vlmforge.data.synth_scenes import sample_scene

    rng = random.Random(f"{seed}-{name}")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        scene = sample_region_scene(rng, 0, most) if most else sample_scene(rng, rng.choice((0, 1, 1, 2, 3)))
        path = f"images/tile-{index}.png"
        draw_tile_scene(rng, scene).save(folder / path)
        records.append({"images": [path], "meta": {"objects": [obj.to_meta() for obj in scene]}})
    for index, record in enumerate(task_records):
        with Image.open(task_root / record["images"][0]) as image:
            small = image.convert("RGB").resize((TOWER_SIZE, TOWER_SIZE), Image.Resampling.BICUBIC)
        path = f"images/view-{index}.png"
        small.save(folder / path)
        records.append({"images": [path], "meta": {"objects": record["meta"]["objects"]}})
    return records


def idefics3_layout(slots: list[str]) -> str:
    """What Idefics3's processor writes for a 3 x 3 grid of tiles at one token per tile (pixel shuffle
    3 on 3 x 3 patches), each `<image>` replaced by the next of `slots` (9 tiles, then the global view).
    Mirrors `Idefics3Processor.replace_image_token` (tests/test_compare_tiling.py checks it)."""
    from vlmforge.model.idefics3 import FAKE_IMAGE_TOKEN, GLOBAL_IMAGE_TOKEN

    text = ""
    for row in range(3):
        text += "".join(f"{FAKE_IMAGE_TOKEN}<row_{row + 1}_col_{col + 1}>{slots[3 * row + col]}" for col in range(3))
        text += "\n"
    return text + f"\n{FAKE_IMAGE_TOKEN}{GLOBAL_IMAGE_TOKEN}{slots[9]}{FAKE_IMAGE_TOKEN}"


# ---- the LM's stand-in for the image: cell words in each family's layout ----
#
# Llava's 9 image tokens are 9 patches of one view: the tower's position embeddings tell each patch's
# place, so Llava's stand-ins are the demo's cell words, which carry place and content
# (`<top_left:red_circle>`, `vlmforge.demo.cell_words`). Idefics3's tiles are read one by one by the
# tower: a tile's token cannot know where the tile was, and the place is only in the layout token
# before it (`<row_1_col_1>`), as in real Idefics3. Its stand-ins are therefore content-only
# (`TILE_WORDS`); the global view's slot keeps the `<image>` token (a view the questions never ask
# about). The LM learns both layouts from the same records.

TILE_WORDS = tuple(f"<{colour}_{shape}>" for colour in ("red", "green", "blue", "yellow", "purple", "orange")
                   for shape in ("circle", "square", "triangle")) + ("<empty>",)


def add_stand_in_words(tokenizer) -> None:
    """The Idefics3 layout tokens, the demo's cell words and one-token place names, and `TILE_WORDS`."""
    from vlmforge.demo.cell_words import add_cell_words
    from vlmforge.model.idefics3 import add_idefics3_tokens

    add_idefics3_tokens(tokenizer)
    add_cell_words(tokenizer)
    tokenizer.add_tokens([word for word in TILE_WORDS if word not in tokenizer.get_vocab()])


def stand_in_ids(record: dict, layout: str, tokenizer) -> tuple[list[int], list[int]]:
    """(ids that replace the record's `<image>`, offset of each of the 9 regions' tokens in them), in
    Llava's layout (9 cell words in a row) or Idefics3's (the processor's layout around 9 tile words)."""
    from vlmforge.data.synth import scene_of_record
    from vlmforge.demo.cell_words import scene_cell_words

    scene = scene_of_record(record)
    if layout == "llava":
        return tokenizer.encode(scene_cell_words(scene), add_special_tokens=False), list(range(9))
    by_cell = {obj.cell: f"<{obj.colour}_{obj.shape}>" for obj in scene}
    ids = tokenizer.encode(idefics3_layout(["<image>"] * 10), add_special_tokens=False)
    slots = [i for i, token in enumerate(ids) if token == tokenizer.convert_tokens_to_ids("<image>")]
    for cell, slot in enumerate(slots[:9]):
        ids[slot] = tokenizer.convert_tokens_to_ids(by_cell.get(cell, "<empty>"))
    return ids, slots[:9]


def lm_sample(record: dict, layout: str, tokenizer):
    """The record as an `LmSample` of the demo's LM pre-training, with the image as stand-in words.

    Tokenised by the data layer (`encode_conversation`, the stand-ins given as the image's own ids, as
    Idefics3's tile ids are given in training). The hint: every answer word looks at the asked region's
    token (last layer); the answer's first word looks at the question's place name (first layer); and,
    in Idefics3's layout, each tile word looks at the `<row_r_col_c>` token just before it (first layer,
    the same head), so the tile's vector can carry its place as the question's place name does.
    (Measured: the trained LM finds the region mostly by its distance from the answer anyway; giving
    every tile the same `<row_r_col_c>` left it at 100 %.)"""
    from vlmforge.data.tokenize import IGNORE_INDEX, encode_conversation
    from vlmforge.demo.lm_pretraining import LmSample

    ids, offsets = stand_in_ids(record, layout, tokenizer)
    encoded = encode_conversation(record["messages"], tokenizer, "<image>", [ids], None)
    start = next(i for i in range(len(encoded.input_ids)) if encoded.input_ids[i:i + len(ids)] == ids)
    cell = start + offsets[record["meta"]["turn_cells"][0]]
    trained = [i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX][:-1]  # not the end of turn
    lookups = [(position - 1, cell) for position in trained]
    places = set(place_ids(tokenizer, record["meta"]["turn_cells"][0]))
    question_words = [(trained[0] - 1, [i for i in range(start) if encoded.input_ids[i] in places])]
    if layout == "idefics3":
        question_words += [(start + offset, [start + offset - 1]) for offset in offsets]
    return LmSample(encoded, lookups, question_words)


def place_ids(tokenizer, cell: int) -> list[int]:
    """Ids of the one-token place names of `cell` ("top left", " top left", "左上")."""
    from vlmforge.demo.cell_words import place_words

    forms = place_words()
    per_cell = len(forms) // 9
    return tokenizer.convert_tokens_to_ids(forms[cell * per_cell:(cell + 1) * per_cell])


def stand_in_composition(tokenizer):
    """(ids, weights (K, V)): the demo's cell words (place + colour + shape words, `cell_word_composition`)
    and the tile words (colour + shape words, "nothing" for `<empty>`): each one's embedding is made of
    the words that name it, so the answer is already in its vector and the LM learns where to look."""
    import torch

    from vlmforge.demo.cell_words import cell_word_composition, content_composition

    rows = [content_composition(tokenizer, word[1:-1]) for word in TILE_WORDS]  # "<empty>" -> "empty"
    cell_ids, cell_rows = cell_word_composition(tokenizer)
    tile_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(TILE_WORDS)))
    return torch.cat([cell_ids, tile_ids]), torch.cat([cell_rows, torch.stack(rows)])


def scratch_parts(args, out: Path, train_path: Path, test_path: Path) -> dict:
    """Tokenizer, tower and LM made here; {"vision", "llm", "metrics"}. The tower is the demo's
    (`pretrain_vision_tower`); the LM is the demo's (`pretrain_language_model`, its shape and hint),
    trained on every training record in both families' layouts, so neither model starts with an LM
    that knows only its rival's image layout."""
    from vlmforge.data.synth_language import LANGUAGES, describe_scene
    from vlmforge.data.synth_scenes import sample_scene
    from vlmforge.data.tokenizer_training import train_bpe_tokenizer
    from vlmforge.demo.lm_pretraining import pretrain_language_model
    from vlmforge.demo.training_loop import read_metrics
    from vlmforge.demo.vision_pretraining import pretrain_vision_tower

    records = [json.loads(line) for line in train_path.read_text().splitlines()]
    rng = random.Random(f"{args.seed}-parts")
    captions = [describe_scene(sample_scene(rng, rng.randint(1, 3)), lang) for _ in range(500) for lang in LANGUAGES]
    tokenizer = train_bpe_tokenizer([m["content"] for r in records for m in r["messages"]] + captions, vocab_size=1024)
    add_stand_in_words(tokenizer)
    tower_data = out / "parts" / "tower-data"
    images = tower_records(tower_data, records[:args.tower_views], train_path.parent, args.tower_tiles, args.seed,
                           most=TOWER_TILE_OBJECTS)
    random.Random(args.seed).shuffle(images)  # its probe split then holds both kinds
    vision = pretrain_vision_tower(images, tower_data, out / "parts" / "vision", max_steps=args.tower_steps,
                                   max_seconds=None, seed=args.seed)
    # probed before scaling (the probes' fit is not scale-free), on images the tower never saw
    probes = probe_by_view(vision, probe_records(out / "parts", args), out / "parts" / "probe-data")
    scale_tower_features(vision, TOWER_FEATURE_SCALE)
    samples = [lm_sample(record, layout, tokenizer) for record in records for layout in ("llava", "idefics3")]
    llm = pretrain_language_model(samples, tokenizer, out / "parts" / "llm", steps=args.lm_steps, seed=args.seed,
                                  composition=stand_in_composition(tokenizer), **LM_SETTINGS)
    metrics = {"vision": read_metrics(vision), "llm": read_metrics(llm)}
    metrics["vision"]["probe_by_view"] = probes
    metrics["llm"]["text_accuracy"] = {layout: lm_text_accuracy(llm, test_path, layout) for layout in ("llava", "idefics3")}
    return {"vision": str(vision), "llm": str(llm), "metrics": metrics}


def scale_tower_features(vision_dir: Path, factor: float) -> None:
    """Scale the saved tower's features by `factor`, its function otherwise unchanged: the residual
    stream's every input (patch and position embeddings, each layer's attention and MLP output) and
    the final LayerNorm's affine are multiplied by it, and the LayerNorms inside read the stream
    scale-free. Both families' features scale alike: Llava's (the last hidden state) and Idefics3's
    (after the final LayerNorm).

    Why (measured with `TOWER_FEATURE_SCALE` = 1, then 1/8): the demo's tower writes features so long
    that a fresh projector starts at image tokens 6-8 times as long as the LM's word embeddings (~1),
    and the tiny LM reads its own cell words at chance at that length (x8: 40 %, x15: 20 %, x3:
    100 %). Aligning under the frozen LM then only grew them: Adam moves each weight by about the
    learning rate a step, so a projector's output moves by about lr x its input's L1 norm, which for
    Idefics3's connector (9 patches side by side) took its tokens to length 377 in 600 steps (25 in
    200 at 1/8). At 1/72 neither family outgrows the LM (colour read at 95 % / 84 % after the same
    500 steps, against 23 % / 15 % unscaled)."""
    import torch
    from transformers import SiglipVisionModel

    tower = SiglipVisionModel.from_pretrained(vision_dir)
    model = getattr(tower, "vision_model", tower)  # transformers 5 has no inner vision_model
    scaled = [model.embeddings.patch_embedding.weight, model.embeddings.patch_embedding.bias,
              model.embeddings.position_embedding.weight, model.post_layernorm.weight, model.post_layernorm.bias]
    for layer in model.encoder.layers:
        scaled += [layer.self_attn.out_proj.weight, layer.self_attn.out_proj.bias, layer.mlp.fc2.weight, layer.mlp.fc2.bias]
    with torch.no_grad():
        for parameter in scaled:
            parameter.mul_(factor)
    tower.save_pretrained(vision_dir)


def probe_records(folder: Path, args, count: int = PROBE_IMAGES) -> list[dict]:
    """`count` tiles and `count` downscaled scenes that the tower never saw (their own seeds) under
    folder/probe-data: what `probe_by_view` is fitted and scored on."""
    scenes = write_split(folder / "probe-scenes", "probe", count, args.scene_size, args.seed, "regions")
    records = [json.loads(line) for line in scenes.read_text().splitlines()]
    return tower_records(folder / "probe-data", records, scenes.parent, count, args.seed, name="probe-tiles")


def probe_by_view(vision_dir: Path, records: list[dict], root: Path) -> dict:
    """Linear probes on the frozen tower, fitted (4/5) and scored (1/5) on one kind of held-out image
    at a time: how much colour and shape a tile at full size carries, and how much the 48 px view of a
    whole scene keeps."""
    from transformers import SiglipVisionModel

    from vlmforge.demo.vision_pretraining import linear_probe, load_scene_tensors

    tower = SiglipVisionModel.from_pretrained(vision_dir).eval()
    result = {}
    for kind in ("tile", "view"):
        chosen = [record for record in records if Path(record["images"][0]).name.startswith(kind)]
        pixels, colours, shapes = load_scene_tensors(chosen, root)
        result[kind] = linear_probe(tower, pixels, colours, shapes, split=len(pixels) * 4 // 5)
    return result


def lm_text_accuracy(llm_dir: Path, test_path: Path, layout: str, count: int = 200) -> dict:
    """The LM alone on test questions, the image given as stand-in words in `layout`: the ceiling of
    what the VLMs can learn. Exact match per question kind."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vlmforge.data.tokenize import encode_prompt

    model, tokenizer = AutoModelForCausalLM.from_pretrained(llm_dir).eval(), AutoTokenizer.from_pretrained(llm_dir)
    hits = {}
    for record in map(json.loads, test_path.read_text().splitlines()[:count]):
        ids = torch.tensor([encode_prompt(record["messages"][:1], tokenizer, "<image>",
                                          [stand_in_ids(record, layout, tokenizer)[0]])])
        with torch.no_grad():
            output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
        said = tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()
        hits.setdefault(record["type"], []).append(said == record["messages"][-1]["content"])
    return {kind: statistics.mean(values) for kind, values in hits.items()}


def tiny_parts(folder: Path, image_size: int) -> dict:
    """Random tiny parts for a smoke run of the real-parts path."""
    from vlmforge.model.tiny import make_tiny_llm, make_tiny_vision

    vision = make_tiny_vision(folder / "vision", "siglip", image_size=image_size, patch_size=16)
    return {"vision": str(vision), "llm": str(make_tiny_llm(folder / "llm", "qwen2")), "metrics": {}}


# ---- build, train, measure (the same for both tasks) ----

def build(args, parts: dict, arch: str, out: Path) -> Path:
    from vlmforge.model.build import BuildConfig, build_vlm, save_vlm

    extra = dict(pixel_shuffle=args.pixel_shuffle, tile_size=args.tile_size, longest_edge=args.longest_edge)
    model, processor = build_vlm(BuildConfig(vision=parts["vision"], llm=parts["llm"], arch=arch, seed=args.seed,
                                             images_after_text=True, **(extra if arch == "idefics3" else {})))
    return save_vlm(model, processor, out)


def train_stages(args, model_dir: Path, data: Path, runs: Path) -> tuple[Path, dict]:
    """Each RECIPE:STEPS of --stages in turn, each from the previous one's model; (final model, speed)."""
    from vlmforge.config import apply_overrides
    from vlmforge.train.loop import train
    from vlmforge.train.recipe import load_recipe

    rows, seconds, steps = [], 0.0, 0
    for stage in args.stages.split(","):
        name, count = stage.rsplit(":", 1)
        overrides = {"model.path": str(model_dir), "data.paths": [str(data)], "data.image_roots": [str(data.parent)],
                     "train.output_dir": str(runs / name), "train.max_steps": int(count),
                     "train.save_steps": int(count), "train.batch_size": args.batch, "train.grad_accum": 1,
                     "train.device": args.device, "train.log_steps": 10, "train.seed": args.seed}
        if args.device == "cpu":
            overrides["train.precision"] = "fp32"
        started = time.perf_counter()
        result = train(apply_overrides(load_recipe(name), overrides))
        seconds, steps = seconds + time.perf_counter() - started, steps + result.steps
        rows += [row for row in result.history[1:] if "tokens_per_s" in row]  # the first window warms up
        model_dir = Path(result.final_model)
    speed = {key: statistics.median(row[key] for row in rows) if rows else float("nan")
             for key in ("tokens_per_s", "samples_per_s")}
    return model_dir, {**speed, "train_seconds": round(seconds, 1), "steps": steps,
                       "wall_samples_per_s": steps * args.batch / seconds}


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


def evaluate(model_dir: Path, test: Path, out: Path, batch: int, device: str) -> dict:
    """Exact match on the test split with the images and with blank ones, overall and per question type."""
    from vlmforge.eval.evaluate import evaluate_model
    from vlmforge.model.load import load

    model, processor = load(model_dir, device=None if device == "cpu" else device)
    truth = {record["id"]: record for record in map(json.loads, test.read_text().splitlines())}
    scores = {}
    for name, blank in (("", False), ("blind_", True)):
        result = evaluate_model(model, processor, test, out, blank_images=blank, batch_size=batch, max_new_tokens=64,
                                task="vqa", java_metrics=False, progress=False)
        hits = {}
        for row in result["per_example"]:
            record = truth[row["id"]]
            hits.setdefault(record["type"], []).append(row["prediction"].strip() == record["messages"][-1]["content"])
        scores[f"{name}accuracy"] = statistics.mean(hit for values in hits.values() for hit in values)
        scores.update({f"{name}{kind}": statistics.mean(values) for kind, values in hits.items()})
    return scores


def compare(args, out: Path, parts: dict, train_path: Path, test_path: Path) -> dict:
    from vlmforge.model.load import load

    rows = {}
    for arch in ("llava", "idefics3"):
        model_dir = build(args, parts, arch, out / arch / "model")
        final, speed = train_stages(args, model_dir, train_path, out / arch / "runs")
        _, processor = load(model_dir)
        rows[arch] = {**evaluate(final, test_path, out / arch / "eval", args.eval_batch, args.device),
                      "image_tokens_per_sample": image_tokens_per_sample(processor, test_path), **speed}
    return rows


def write_table(out: Path, args, rows: dict, parts: dict, seconds: float) -> str:
    """comparison.md (the table, then the parts' own measures) and comparison.json (everything)."""
    import torch
    import transformers

    columns = [("image tokens / sample", "image_tokens_per_sample", "{:.0f}"), ("accuracy", "accuracy", "{:.1%}"),
               ("shape at a region", "shape_at", "{:.1%}"), ("colour at a region", "colour_at", "{:.1%}"),
               ("blind", "blind_accuracy", "{:.1%}"), ("blind: shape / colour", "blind_shape_at", "{:.1%}"),
               ("training tokens/s", "tokens_per_s", "{:.0f}"), ("training samples/s", "samples_per_s", "{:.1f}"),
               ("wall samples/s", "wall_samples_per_s", "{:.1f}")]
    table = ["| arch | " + " | ".join(title for title, _, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for arch, row in rows.items():
        cells = [form.format(row[key]) if key in row else "—" for _, key, form in columns]
        if "blind_colour_at" in row:
            cells[5] += f" / {row['blind_colour_at']:.1%}"
        table.append(f"| {arch} | " + " | ".join(cells) + " |")
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "cpu": _cpu_name(),
                "python": platform.python_version(), "threads": torch.get_num_threads()}
    report = {"settings": vars(args), "versions": versions, "results": rows, "parts": parts["metrics"],
              "seconds": round(seconds, 1)}
    (out / "comparison.json").write_text(json.dumps(report, indent=2) + "\n")
    text = "\n".join(table + [""] + parts_lines(parts["metrics"]) + [f"", f"{seconds:.0f} s in all"])
    (out / "comparison.md").write_text(text + "\n")
    return text


def parts_lines(metrics: dict) -> list[str]:
    """The parts' own measures as lines: the LM alone on stand-in words, the tower's probes per view."""
    lines = []
    for layout, kinds in metrics.get("llm", {}).get("text_accuracy", {}).items():
        lines.append(f"- LM alone, {layout} layout: " + ", ".join(f"{k} {v:.1%}" for k, v in sorted(kinds.items())))
    for view, probe in metrics.get("vision", {}).get("probe_by_view", {}).items():
        lines.append(f"- tower probe, {view}: " + ", ".join(f"{k} {v:.1%}" for k, v in sorted(probe.items())
                                                          if isinstance(v, float)))
    return lines


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", default="")
    parser.add_argument("--llm", default="")
    parser.add_argument("--scratch", action="store_true", help="parts made here and the small-object task (CPU)")
    parser.add_argument("--tiny", action="store_true", help="tiny random parts: a smoke run of the script")
    parser.add_argument("--out", required=True)
    parser.add_argument("--scene-size", type=int, default=None, help="default 768; --scratch: 144 (3 x 3 tiles)")
    parser.add_argument("--tile-size", type=int, default=None)
    parser.add_argument("--pixel-shuffle", type=int, default=None, help="default 3 (3 for --scratch: 3 x 3 patches a tile)")
    parser.add_argument("--longest-edge", type=int, default=None, help="default the scene size")
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--stages", default=None, help="RECIPE:STEPS,... trained in turn; default instruct-lora:600, "
                                                       "--scratch demo-align:200,demo-instruct-lora:600")
    parser.add_argument("--batch", type=int, default=None, help="default 8; --scratch 16")
    parser.add_argument("--eval-batch", type=int, default=50)
    parser.add_argument("--tower-tiles", type=int, default=10000, help="--scratch: 48 px tiles the tower is trained on")
    parser.add_argument("--tower-views", type=int, default=2000, help="--scratch: downscaled scenes the tower is trained on")
    parser.add_argument("--tower-steps", type=int, default=2000)
    parser.add_argument("--lm-steps", type=int, default=1500)
    parser.add_argument("--device", default=None, help="default cuda; --scratch and --tiny cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    small = args.scratch or args.tiny
    args.scene_size = 3 * TOWER_SIZE if args.scratch else (args.scene_size or 768)
    args.pixel_shuffle = args.pixel_shuffle or 3
    args.longest_edge = args.longest_edge or args.scene_size
    args.stages = args.stages or ("demo-align:200,demo-instruct-lora:600" if args.scratch else "instruct-lora:600")
    args.batch = args.batch or (16 if args.scratch else 8)
    args.device = args.device or ("cpu" if small else "cuda")
    return args


def main() -> None:
    args = parse_args()
    started, out = time.perf_counter(), Path(args.out)
    task = "regions" if args.scratch else "digits"
    train_path = write_split(out / "data", "train", args.train, args.scene_size, args.seed, task)
    test_path = write_split(out / "data", "test", args.test, args.scene_size, args.seed, task)
    if args.scratch:
        parts = scratch_parts(args, out, train_path, test_path)
        print(json.dumps(parts["metrics"]), flush=True)
    elif args.tiny:
        parts = tiny_parts(out / "parts", args.tile_size or 64)
    else:
        parts = {"vision": args.vision, "llm": args.llm, "metrics": {}}
    rows = compare(args, out, parts, train_path, test_path)
    print(write_table(out, args, rows, parts, time.perf_counter() - started))


if __name__ == "__main__":
    main()
