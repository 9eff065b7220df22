"""The demo's from-scratch parts: tokenizer, vision tower and language model, as Hugging Face folders.

    from vlmforge.demo.parts import make_demo_parts
    parts = make_demo_parts("data/shapes", "parts", seed=0)   # {"vision": ..., "llm": ..., "metrics": ...}
    # then: vlmforge build --vision parts/vision --llm parts/llm ...

Each function is also usable on its own:
- `train_demo_tokenizer`: byte-level BPE with the ChatML template and `<image>` as a special token,
  trained on every text of the records and on the scene captions, English and Chinese;
- `pretrain_vision_tower` (see `vision_pretraining`): SigLIP tower, per-patch colour/shape objective;
- `pretrain_language_model` (see `lm_pretraining`): Qwen2 LM on the conversations as chat text.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.records import read_records
from vlmforge.data.synth import scene_of_record
from vlmforge.data.synth_language import CAPTION_PROMPTS, LANGUAGES, describe_scene
from vlmforge.data.tokenizer_training import train_bpe_tokenizer
from vlmforge.demo.lm_pretraining import conversation_texts, pretrain_language_model, text_answer_accuracy
from vlmforge.demo.training_loop import read_metrics
from vlmforge.demo.vision_pretraining import pretrain_vision_tower

__all__ = [
    "conversation_texts",
    "make_demo_parts",
    "pretrain_language_model",
    "pretrain_vision_tower",
    "text_answer_accuracy",
    "train_demo_tokenizer",
]

logger = logging.getLogger(__name__)


def tokenizer_texts(records: list[dict]) -> list[str]:
    """Every message text of `records` (placeholder removed) and each scene's caption in both languages."""
    texts = list(CAPTION_PROMPTS.values())
    for record in records:
        texts += [message["content"].replace(IMAGE_PLACEHOLDER, "") for message in record["messages"]]
        texts += [describe_scene(scene_of_record(record), lang) for lang in LANGUAGES]
    return texts


def train_demo_tokenizer(records: list[dict], vocab_size: int = 1024, out_dir: str | Path | None = None):
    """A ChatML byte-level BPE tokenizer trained on the records' texts, `<image>` a special token.

    Returns the tokenizer; also saves it to `out_dir` when given.
    """
    tokenizer = train_bpe_tokenizer(tokenizer_texts(records), vocab_size=vocab_size, style="chatml")
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def make_demo_parts(
    dataset_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    vision_seconds: float | None = 30.0,
    lm_seconds: float | None = 90.0,
    vision_steps: int | None = 400,
    lm_steps: int | None = None,
    image_text: str = "caption",
    vocab_size: int = 1024,
) -> dict:
    """Tokenizer, vision tower and LM pre-trained on a synthetic dataset (`write_synthetic_dataset`'s folder).

    Writes `out_dir/vision` and `out_dir/llm` (with the tokenizer); returns their paths and metrics.
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    train = read_records(dataset_dir / "train.jsonl")
    captions = read_records(dataset_dir / "captions.jsonl")
    tokenizer = train_demo_tokenizer(train + captions, vocab_size=vocab_size)
    vision_dir = pretrain_vision_tower(
        train, dataset_dir, out_dir / "vision", max_steps=vision_steps, max_seconds=vision_seconds, seed=seed
    )
    texts = conversation_texts(train + captions, tokenizer, image_text=image_text)
    llm_dir = pretrain_language_model(
        texts, tokenizer, out_dir / "llm", max_steps=lm_steps, max_seconds=lm_seconds, seed=seed
    )
    metrics = {name: read_metrics(path) for name, path in (("vision", vision_dir), ("llm", llm_dir))}
    return {"vision": str(vision_dir), "llm": str(llm_dir), "metrics": metrics}

