"""Training tokenisation: a conversation → `input_ids` + `labels` through the LLM's own chat template.

    sample = encode_conversation(record["messages"], tokenizer, image_token="<image>",
                                 num_image_tokens=576, max_length=2048)

Labels are -100 everywhere except on the tokens of every assistant turn, including the
end-of-turn token the template writes after the content (`<|im_end|>`, `<|eot_id|>`, ...) so the
model learns to stop. Prompt, system text and image tokens are never trained.

Assistant spans are found for any template by rendering prefixes: the text of `messages[:i]` with
the generation prompt ends where assistant turn i starts, the text of `messages[:i+1]` ends where it
stops (whitespace the template puts after the end-of-turn token stays untrained). Each piece is
tokenised on its own, exactly as inference tokenises a prompt and then generates. Each `<image>`
placeholder becomes `num_image_tokens` copies of the processor's image token, here in the data
layer, so the model never changes sequence length. Inference reuses `encode_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.errors import DataError, ModelError

IGNORE_INDEX = -100
TOO_LONG_POLICIES = ("drop", "truncate")


@dataclass
class EncodedSample:
    """One tokenised conversation; `labels[i]` is `input_ids[i]` where trained, else -100."""

    input_ids: list[int]
    labels: list[int]
    num_images: int

    @property
    def num_trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def render(messages: list[dict], tokenizer, add_generation_prompt: bool = False) -> str:
    """The chat-template text of `messages` (string contents, `<image>` placeholders kept)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def conversation_segments(messages: list[dict], tokenizer) -> list[tuple[str, bool]]:
    """The rendered conversation cut into `(text, trained)` pieces; trained pieces are assistant turns."""
    full = render(messages, tokenizer)
    segments, cursor = [], 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start, end = _assistant_span(full, messages, index, tokenizer, cursor)
        segments += [(full[cursor:start], False), (full[start:end], True)]
        cursor = end
    segments.append((full[cursor:], False))
    return [(text, trained) for text, trained in segments if text or trained]


def _assistant_span(full: str, messages: list[dict], index: int, tokenizer, cursor: int) -> tuple[int, int]:
    """Character span of assistant turn `index` in `full`: its content and end-of-turn marker."""
    before = render(messages[:index], tokenizer, add_generation_prompt=True)
    through = render(messages[: index + 1], tokenizer)
    if full.startswith(before) and full.startswith(through) and cursor <= len(before) <= len(through):
        start, end = len(before), len(through)
        return start, start + len(full[start:end].rstrip())
    return _search_span(full, messages[index]["content"], tokenizer, cursor)


def _search_span(full: str, content: str, tokenizer, cursor: int) -> tuple[int, int]:
    """Fallback for templates that re-render earlier turns: find the content, add the eos token after it."""
    start = full.find(content, cursor)
    if start < 0:
        raise DataError("the chat template rewrites assistant turns; cannot locate the text to train on")
    end = start + len(content)
    eos = tokenizer.eos_token or ""
    return start, end + len(eos) if eos and full.startswith(eos, end) else end


def token_id_of(tokenizer, token: str) -> int:
    """The id of a token that must be a single token of the vocabulary (e.g. the image token)."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ModelError(f"{token!r} is not a single token of this tokenizer; add it as a special token")
    return ids[0]


def _encode_text(text: str, tokenizer, image_token_id: int, num_image_tokens: int) -> tuple[list[int], int]:
    """Token ids of `text` with each placeholder expanded; returns (ids, number of images)."""
    pieces = text.split(IMAGE_PLACEHOLDER)
    ids: list[int] = []
    for index, piece in enumerate(pieces):
        if index:
            ids += [image_token_id] * num_image_tokens
        if piece:
            ids += tokenizer.encode(piece, add_special_tokens=False)
    return ids, len(pieces) - 1


def encode_conversation(
    record_messages: list[dict],
    tokenizer,
    image_token: str,
    num_image_tokens: int,
    max_length: int | None,
    too_long: str = "drop",
) -> EncodedSample | None:
    """Tokenise a conversation for training; None when it is too long for `max_length` under `too_long`.

    `too_long="drop"` refuses any sequence over `max_length`; `"truncate"` cuts text after the last
    image (never an image token) and still returns None when that is not enough or leaves nothing
    to train on. The caller counts the Nones.
    """
    if too_long not in TOO_LONG_POLICIES:
        raise DataError(f"unknown too-long policy {too_long!r} (use {' or '.join(TOO_LONG_POLICIES)})")
    image_token_id = token_id_of(tokenizer, image_token)
    input_ids: list[int] = []
    labels: list[int] = []
    num_images = 0
    for text, trained in conversation_segments(record_messages, tokenizer):
        ids, images = _encode_text(text, tokenizer, image_token_id, num_image_tokens)
        if trained and images:
            raise DataError(f"an assistant turn holds {IMAGE_PLACEHOLDER}; only user turns may")
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
        num_images += images
    sample = EncodedSample(input_ids, labels, num_images)
    if max_length is None or len(input_ids) <= max_length:
        return sample
    return _truncate(sample, max_length, image_token_id) if too_long == "truncate" else None


def _truncate(sample: EncodedSample, max_length: int, image_token_id: int) -> EncodedSample | None:
    """Cut to `max_length` when every image token survives and some label remains."""
    image_positions = [i for i, token in enumerate(sample.input_ids) if token == image_token_id]
    if image_positions and image_positions[-1] >= max_length:
        return None
    cut = EncodedSample(sample.input_ids[:max_length], sample.labels[:max_length], sample.num_images)
    return cut if cut.num_trained_tokens else None


def encode_prompt(messages: list[dict], tokenizer, image_token: str, num_image_tokens: int) -> list[int]:
    """Token ids of a prompt for generation: the template with the generation prompt, images expanded."""
    text = render(messages, tokenizer, add_generation_prompt=True)
    ids, _ = _encode_text(text, tokenizer, token_id_of(tokenizer, image_token), num_image_tokens)
    return ids


def image_tokens_per_image(processor) -> int:
    """How many image tokens the processor puts in the text for one image (e.g. 576 for CLIP-L/336)."""
    from PIL import Image

    side = _processor_image_side(processor.image_processor)
    batch = processor(text=processor.image_token, images=[Image.new("RGB", (side, side))])
    ids = list(batch["input_ids"][0])
    return ids.count(token_id_of(processor.tokenizer, processor.image_token))


def _processor_image_side(image_processor) -> int:
    for attribute in ("crop_size", "size"):
        size = getattr(image_processor, attribute, None) or {}
        size = size if isinstance(size, dict) else vars(size) if hasattr(size, "__dict__") else {}
        for key in ("height", "shortest_edge", "width"):
            if size.get(key):
                return int(size[key])
    return 224
