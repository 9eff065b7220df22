"""Write the synthetic shape-scene dataset of the from-scratch demo, in the vlmforge record format.

    from vlmforge.data.synth import write_synthetic_dataset
    summary = write_synthetic_dataset("data/shapes", seed=0)   # or: vlmforge data synth --out data/shapes

Layout of `out_dir` (record image paths are relative to it):

    train.jsonl, val.jsonl, test.jsonl   question/answer records, types colour | shape | position | count |
                                         by_position (when "position" is a referent) | follow_up (val/test)
    captions.jsonl                       one caption record (type caption) per train scene, same images:
                                         the data of the projector alignment stage
    images/{train,val,test}/000001.png

A record: {"id", "source": "synth", "images": ["images/train/000001.png"], "messages": [user, assistant, …],
"type", "lang", "meta": {"objects": [{"shape", "colour", "row", "col"}], "turn_types": [...]}}.
Only the first user turn holds the `<image>` placeholder, before or after the question
(`question_position`). `type` is the type of the first question (`follow_up` for a held-out follow-up);
`meta.turn_types` lists every turn's type, `meta.turn_cells` the grid cell (0-8, row by row) of the object each
question asks about (null for count questions).
Val/test score one question per record: the last one. Their records cycle through every (type,
language) pair, so each is equally represented, and type `follow_up`: a two-turn conversation whose
second question (the scored one, of any type in turn) comes after the first answer, the way a user
asks on about an image in a chat. Train has multi-turn conversations in `multi_turn_fraction`.

Held-out scenes: the space of scenes is split by a stable hash into a train part (80 %), a val part
and a test part (10 % each), so no val/test scene is a copy of a train scene (one-object scenes,
of which there are only 162, do repeat within a split).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from tqdm.auto import tqdm

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.records import write_records
from vlmforge.data.synth_language import (
    CAPTION_PROMPTS,
    LANGUAGES,
    FOLLOW_UP,
    QUESTION_TYPES,
    REFERENTS,
    ask,
    askable_types,
    describe_scene,
)
from vlmforge.data.synth_scenes import (
    MAX_OBJECTS,
    MIN_IMAGE_SIZE,
    Scene,
    render_scene,
    sample_scene,
    scene_bucket,
    scene_from_meta,
)
from vlmforge.errors import ConfigError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
QUESTION_POSITIONS = ("before", "after")
_SPLIT_BUCKETS = {"train": range(0, 80), "val": range(80, 90), "test": range(90, 100)}
_SPLIT_SEED_OFFSET = {"train": 0, "val": 1, "test": 2}


def write_synthetic_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_train: int = 10_000,
    num_val: int = 200,
    num_test: int = 400,
    image_size: int = 48,
    question_position: str = "before",
    zh_fraction: float = 0.5,
    multi_turn_fraction: float = 0.25,
    referents: tuple[str, ...] = REFERENTS,
) -> dict:
    """Generate the dataset into `out_dir` (deterministic by `seed`); returns paths and counts.

    `referents`: what a question may name its object by — "shape" ("What color is the square?"),
    "colour" ("Where is the red object?"), "position" ("What color is the shape at the top left?").
    """
    _check_arguments(num_train, num_val, num_test, image_size, question_position, zh_fraction, multi_turn_fraction)
    referents = _checked_referents(referents)
    out_dir = Path(out_dir)
    options = {"image_size": image_size, "question_position": question_position, "zh_fraction": zh_fraction,
               "referents": referents}
    counts = {"train": num_train, "val": num_val, "test": num_test}
    summary = {"out_dir": str(out_dir), "seed": seed, "image_size": image_size, "referents": list(referents),
               "counts": {}}
    for split in SPLITS:
        rng = random.Random(f"{seed}-{_SPLIT_SEED_OFFSET[split]}")
        turn_fraction = multi_turn_fraction if split == "train" else 0.0
        records = _make_split(out_dir, split, counts[split], rng, options, turn_fraction)
        write_records(out_dir / f"{split}.jsonl", records)
        summary[split] = str(out_dir / f"{split}.jsonl")
        summary["counts"][split] = len(records)
        if split == "train":
            captions = _caption_records(records, random.Random(f"{seed}-captions"), question_position, zh_fraction)
            write_records(out_dir / "captions.jsonl", captions)
            summary["captions"] = str(out_dir / "captions.jsonl")
            summary["counts"]["captions"] = len(captions)
    summary["images_dir"] = str(out_dir / "images")
    logger.info("synthetic dataset in %s: %s", out_dir, summary["counts"])
    return summary


def _check_arguments(num_train, num_val, num_test, image_size, question_position, zh_fraction, multi_turn_fraction):
    if min(num_train, num_val, num_test) < 0:
        raise ConfigError(f"record counts must be >= 0, got train={num_train} val={num_val} test={num_test}")
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"image_size must be at least {MIN_IMAGE_SIZE} px, got {image_size}")
    if question_position not in QUESTION_POSITIONS:
        raise ConfigError(f"question_position must be one of {QUESTION_POSITIONS}, got {question_position!r}")
    for name, value in (("zh_fraction", zh_fraction), ("multi_turn_fraction", multi_turn_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be between 0 and 1, got {value}")


def _checked_referents(referents) -> tuple[str, ...]:
    referents = tuple(referents)
    unknown = sorted(set(referents) - set(REFERENTS))
    if unknown:
        raise ConfigError(f"unknown referents {unknown}; choose from {list(REFERENTS)}")
    askable = askable_types(referents)
    for qtype in QUESTION_TYPES:
        if qtype != "by_position" and qtype not in askable:  # by_position needs the "position" referent
            raise ConfigError(f"referents {list(referents)} leave no way to ask a {qtype} question")
    return referents


def _make_split(out_dir: Path, split: str, count: int, rng: random.Random, options: dict, turn_fraction: float):
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    types = askable_types(options["referents"])
    for index in tqdm(range(count), desc=f"synth {split}", unit="img", leave=False):
        scene = _sample_scene_in_split(rng, split)
        relative_path = f"images/{split}/{index + 1:06d}.png"
        render_scene(scene, options["image_size"], rng).save(out_dir / relative_path)
        qtype, lang = _pick_type_and_language(split, index, rng, options["zh_fraction"], types)
        if qtype == FOLLOW_UP:
            turns = _follow_up_turns(scene, _held_out_round(index, types), lang, rng, types, options["referents"])
        else:
            num_turns = rng.randint(2, 3) if rng.random() < turn_fraction else 1
            turns = _conversation_turns(scene, qtype, lang, num_turns, rng, options["referents"], types)
        record_id = f"synth-{split}-{index + 1:06d}"
        records.append(_record(record_id, relative_path, scene, turns, qtype, lang, options["question_position"]))
    return records


def _sample_scene_in_split(rng: random.Random, split: str) -> Scene:
    """Rejection-sample scenes until one hashes into `split`'s part of the scene space."""
    while True:
        scene = sample_scene(rng, rng.randint(1, MAX_OBJECTS))
        if scene_bucket(scene) in _SPLIT_BUCKETS[split]:
            return scene


def _pick_type_and_language(split: str, index: int, rng: random.Random, zh_fraction: float,
                            types: tuple[str, ...]) -> tuple[str, str]:
    if split != "train":  # cycle through every (type, language) pair so the held-out sets are balanced
        kinds = (*types, FOLLOW_UP)
        return kinds[index % len(kinds)], LANGUAGES[(index // len(kinds)) % len(LANGUAGES)]
    return rng.choice(types), ("zh" if rng.random() < zh_fraction else "en")


def _held_out_round(index: int, types: tuple[str, ...]) -> str:
    """The scored type of held-out record `index` when it is a follow-up: the next type on each full
    cycle through (type + follow_up) × language, so follow-ups ask every type in turn."""
    cycle = (len(types) + 1) * len(LANGUAGES)
    return types[(index // cycle) % len(types)]


def _follow_up_turns(scene: Scene, scored_type: str, lang: str, rng: random.Random, types: tuple[str, ...],
                     referents: tuple[str, ...]):
    """A first question of another type, then the scored one of `scored_type`."""
    first_type = rng.choice([qtype for qtype in types if qtype != scored_type])
    return [(first_type, *ask(first_type, scene, lang, rng, referents)),
            (scored_type, *ask(scored_type, scene, lang, rng, referents))]


def _conversation_turns(scene: Scene, first_type: str, lang: str, num_turns: int, rng: random.Random,
                        referents: tuple[str, ...], types: tuple[str, ...]):
    """`num_turns` (type, question, answer) triples with distinct questions; the first is of `first_type`."""
    turns = [(first_type, *ask(first_type, scene, lang, rng, referents))]
    while len(turns) < num_turns:
        qtype = rng.choice(types)
        question, answer, cell = ask(qtype, scene, lang, rng, referents)
        if all(question != asked for _, asked, _, _ in turns):
            turns.append((qtype, question, answer, cell))
    return turns


def _record(record_id: str, image_path: str, scene: Scene, turns: list, record_type: str, lang: str,
            question_position: str) -> dict:
    messages = []
    for turn_index, (_, question, answer, _) in enumerate(turns):
        content = _with_image(question, question_position) if turn_index == 0 else question
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
    return {
        "id": record_id,
        "source": "synth",
        "images": [image_path],
        "messages": messages,
        "type": record_type,
        "lang": lang,
        "meta": {"objects": [obj.to_meta() for obj in scene], "turn_types": [turn[0] for turn in turns],
                 "turn_cells": [turn[3] for turn in turns]},
    }


def _with_image(text: str, question_position: str) -> str:
    if question_position == "before":
        return f"{text}\n{IMAGE_PLACEHOLDER}"
    return f"{IMAGE_PLACEHOLDER}\n{text}"


def _caption_records(train_records: list[dict], rng: random.Random, question_position: str, zh_fraction: float):
    """One caption record per train scene, on the same image, in a random language."""
    captions = []
    for record in train_records:
        lang = "zh" if rng.random() < zh_fraction else "en"
        scene = scene_of_record(record)
        messages = [
            {"role": "user", "content": _with_image(CAPTION_PROMPTS[lang], question_position)},
            {"role": "assistant", "content": describe_scene(scene, lang)},
        ]
        caption_id = record["id"].replace("synth-train-", "synth-caption-")
        meta = {"objects": record["meta"]["objects"], "turn_types": ["caption"]}
        caption = {"id": caption_id, "source": "synth", "images": record["images"], "messages": messages}
        captions.append({**caption, "type": "caption", "lang": lang, "meta": meta})
    return captions


def scene_of_record(record: dict) -> Scene:
    """The scene a synthetic record is about, from its `meta.objects`."""
    return scene_from_meta(record["meta"]["objects"])

