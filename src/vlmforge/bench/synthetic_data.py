"""A synthetic LLaVA-like training set for the benchmark, in the vlmforge record format.

    path = write_bench_dataset(tmp / "data", count=80, image_size=224, seed=0)

The lengths follow the mix of LLaVA instruct data (llava_v1_5_mix665k): many short VQA answers
(often several per image), multi-turn conversations, long detailed descriptions, reasoning
answers, captions, and ~10 % text-only records. Only the lengths matter to a benchmark, so the
words are drawn from a small vocabulary the tiny tokenizers know and the images are plain shapes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

WORDS = ("a the cat is sitting on red sofa next to window two people are walking dog along beach at sunset "
         "how many shapes there three circle blue square green triangle quick brown fox jumps over lazy "
         "where top left picture describe image in detail what this").split()


@dataclass(frozen=True)
class Kind:
    """One family of records: its share, turns per record, and words per question / answer."""

    name: str
    share: float
    turns: tuple[int, int]
    question_words: tuple[int, int]
    answer_words: tuple[int, int]
    has_image: bool = True


KINDS = (
    Kind("short_vqa", 0.30, (1, 6), (6, 14), (1, 3)),
    Kind("conversation", 0.20, (2, 5), (6, 16), (15, 60)),
    Kind("detail", 0.15, (1, 1), (6, 12), (60, 200)),
    Kind("reasoning", 0.15, (1, 1), (10, 25), (40, 120)),
    Kind("caption", 0.10, (1, 1), (4, 8), (8, 20)),
    Kind("text_only", 0.10, (1, 3), (8, 30), (20, 150), has_image=False),
)


def _sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(max(1, words)))
    return text[0].upper() + text[1:] + "."


def _answer(rng: random.Random, words: int) -> str:
    """An answer of about `words` words; long ones get `\\n\\n` paragraph breaks as LLaVA's do."""
    paragraphs, left = [], words
    while left > 0:
        size = min(left, rng.randint(25, 60))
        paragraphs.append(_sentence(rng, size))
        left -= size
    return "\n\n".join(paragraphs)


def _scaled(rng: random.Random, bounds: tuple[int, int], scale: float) -> int:
    return max(1, round(rng.randint(*bounds) * scale))


def make_record(rng: random.Random, kind: Kind, index: int, text_scale: float) -> dict:
    messages = []
    for turn in range(rng.randint(*kind.turns)):
        question = _sentence(rng, _scaled(rng, kind.question_words, text_scale)).rstrip(".") + "?"
        if turn == 0 and kind.has_image:
            question = "<image>\n" + question
        messages += [{"role": "user", "content": question},
                     {"role": "assistant", "content": _answer(rng, _scaled(rng, kind.answer_words, text_scale))}]
    record = {"id": f"bench-{index}", "source": kind.name, "messages": messages}
    if kind.has_image:
        record["images"] = [f"images/{index:05d}.png"]
    return record


def _draw_image(path: Path, size: int, rng: random.Random) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), tuple(rng.randint(0, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.randint(0, size - 4), rng.randint(0, size - 4)
        box = (x, y, min(size, x + rng.randint(4, size // 2 + 4)), min(size, y + rng.randint(4, size // 2 + 4)))
        draw.rectangle(box, fill=tuple(rng.randint(0, 255) for _ in range(3)))
    image.save(path)


def write_bench_dataset(out_dir: str | Path, count: int, image_size: int, seed: int = 0,
                        text_scale: float = 1.0) -> Path:
    """Write `count` records (+ their images) to `out_dir/train.jsonl`; returns the JSONL path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng, image_rng = random.Random(seed), random.Random(seed + 1)  # the texts do not depend on the image size
    kinds = rng.choices(KINDS, weights=[kind.share for kind in KINDS], k=count)
    lines = []
    for index, kind in enumerate(kinds):
        record = make_record(rng, kind, index, text_scale)
        if kind.has_image:
            _draw_image(out_dir / record["images"][0], image_size, image_rng)
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    path = out_dir / "train.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    return path
