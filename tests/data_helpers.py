"""Helpers shared by the data-layer tests: a real tokenizer and processor built offline, marked spans."""

from __future__ import annotations

from pathlib import Path

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.tokenize import IGNORE_INDEX, encode_conversation

CORPUS = [
    "What is happening in this picture? A man rides a red bicycle along the river.",
    "Describe the image briefly. Two dogs play with a ball on the green grass.",
    "Be concise and answer in one sentence. How many people are there? There are three people.",
    "这张图片里有什么？一个男人在河边骑红色的自行车。",
    "有几个人？图中有三个人在草地上玩球。",
    "请用一句话描述这张图片。两只狗在绿色的草地上玩。",
]

LABEL_CONVERSATIONS = {
    "en": [
        {"role": "system", "content": "Be concise."},
        {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\nWhat is happening in this picture?"},
        {"role": "assistant", "content": "A man rides a red bicycle along the river."},
        {"role": "user", "content": "How many people are there?"},
        {"role": "assistant", "content": "There is one person.\n\nHe is riding."},
    ],
    "zh": [
        {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n这张图片里有什么？"},
        {"role": "assistant", "content": "一个男人在河边骑红色的自行车。"},
        {"role": "user", "content": "有几个人？"},
        {"role": "assistant", "content": "图中有一个人。"},
    ],
}


def make_tokenizer(style: str = "chatml"):
    """A byte-level BPE tokenizer trained on CORPUS, with `<image>` as a special token."""
    from vlmforge.data.tokenizer_training import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(CORPUS, vocab_size=400, style=style)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    return tokenizer


def marked_training_text(messages: list[dict], tokenizer, num_image_tokens: int = 2) -> str:
    """The encoded conversation decoded back to text, trained runs wrapped in ⟦ ⟧."""
    sample = encode_conversation(messages, tokenizer, IMAGE_PLACEHOLDER, num_image_tokens, None)
    pieces, run, trained = [], [], None
    for token, label in zip(sample.input_ids, sample.labels):
        is_trained = label != IGNORE_INDEX
        if run and is_trained != trained:
            pieces.append(_decode_run(run, trained, tokenizer))
            run = []
        run.append(token)
        trained = is_trained
    pieces.append(_decode_run(run, trained, tokenizer))
    return "".join(pieces)


def _decode_run(ids: list[int], trained: bool, tokenizer) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return f"⟦{text}⟧" if trained else text


def make_processor_folder(folder: Path, style: str = "chatml", image_side: int = 32, patch_size: int = 8) -> Path:
    """Save a LlavaProcessor (tiny CLIP image processor + the test tokenizer) to `folder`."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    tokenizer = make_tokenizer(style)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_side}, crop_size={"height": image_side, "width": image_side})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                               vision_feature_select_strategy="full", num_additional_image_tokens=0,
                               chat_template=tokenizer.chat_template)
    processor.save_pretrained(folder)
    return folder
