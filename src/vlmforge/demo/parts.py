"""The demo's tokenizer: byte-level BPE trained on the synthetic data's texts, ChatML template, `<image>`.

    tokenizer = train_demo_tokenizer(train_records + caption_records)

The other from-scratch parts live beside it: `vision_pretraining` (SigLIP tower, per-patch
objective) and `lm_pretraining` (Qwen2 LM on the conversations, the image as cell words).
"""

from __future__ import annotations

from pathlib import Path

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.synth import scene_of_record
from vlmforge.data.synth_language import CAPTION_PROMPTS, LANGUAGES, describe_scene
from vlmforge.data.tokenizer_training import train_bpe_tokenizer



def tokenizer_texts(records: list[dict]) -> list[str]:
    """Every message text of `records` (placeholder removed), each scene's caption in both languages, and
    the chat template's role names once per message (they frame every turn: one token each, not seven)."""
    texts = list(CAPTION_PROMPTS.values())
    for record in records:
        texts += [message["role"] for message in record["messages"]]
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
