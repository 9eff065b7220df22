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
layer, so the model never changes sequence length. Inference encodes its prompts with
`encode_prompt` (through `infer.generate.prompt_token_ids`): one path for training and serving.

Text from users and datasets never becomes a control token: a message whose text holds the text
of one of the tokenizer's special tokens (`<|im_end|>\\n<|im_start|>system ...`, `<|eot_id|>`)
is located in the rendered template (`literal_spans`) and encoded with special-token parsing off,
so it cannot close its own turn or forge a system / assistant turn. The template's own control
tokens stay special, and `<image>` placeholders still become image tokens. Messages without such
text are encoded exactly as before.
"""

from __future__ import annotations

import contextlib
import re
import weakref
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
    image_end: int = 0  # position after the last image's tokens (truncation never cuts before it)

    @property
    def num_trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def render(messages: list[dict], tokenizer, add_generation_prompt: bool = False, chat_template: str | None = None) -> str:
    """The chat-template text of `messages` (`<image>` placeholders kept); `chat_template` overrides the tokenizer's."""
    extra = {"chat_template": chat_template} if chat_template is not None else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)


# ---------------------------------------------------------------------------------------------
# Control-token text in message content


_CONTROL_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (size, tokens, pattern)


def control_tokens(tokenizer) -> list[str]:
    """The text of every special added token except the image placeholder: what content must never produce."""
    return _control_entry(tokenizer)[1]


def _control_entry(tokenizer) -> tuple[int, list[str], re.Pattern | None]:
    """(vocabulary size, control tokens, one regex finding any of them), cached per tokenizer.

    Listing added tokens costs about a millisecond with a Llama 3 vocabulary (256 of them), more
    than the rest of a sample's checks; the cache is refreshed when tokens are added (size changes).
    """
    size = len(tokenizer)
    try:
        cached = _CONTROL_CACHE.get(tokenizer)
    except TypeError:  # not weakly referenceable: no cache
        cached = None
    if cached is not None and cached[0] == size:
        return cached
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special = {token.content for token in decoder.values() if getattr(token, "special", False)}
    special |= set(getattr(tokenizer, "all_special_tokens", []) or [])
    tokens = sorted(token for token in special if token and token != IMAGE_PLACEHOLDER)
    pattern = re.compile("|".join(re.escape(token) for token in sorted(tokens, key=len, reverse=True))) if tokens else None
    entry = (size, tokens, pattern)
    with contextlib.suppress(TypeError):
        _CONTROL_CACHE[tokenizer] = entry
    return entry


def find_control_text(text: str, tokens: list[str]) -> str | None:
    """The first control token whose text appears in `text`, or None."""
    return next((token for token in tokens if token in text), None)


def control_text_in(messages: list[dict], tokenizer) -> str | None:
    """The first control-token text found in any message text (string content or text parts), or None."""
    pattern = _control_entry(tokenizer)[2]
    if pattern is None:
        return None
    return next((found.group() for _, _, text in _text_slots(messages) if (found := pattern.search(text))), None)


def _text_slots(messages: list[dict]) -> list[tuple[int, int | None, str]]:
    """(message index, content-part index or None, text) of every piece of message text."""
    slots = []
    for index, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str):
            slots.append((index, None, content))
        elif isinstance(content, list):
            slots += [(index, part_index, part["text"]) for part_index, part in enumerate(content)
                      if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)]
    return slots


def _with_text(messages: list[dict], index: int, part: int | None, text: str) -> list[dict]:
    """A copy of `messages` where one piece of text is replaced."""
    copied = [dict(message) for message in messages]
    if part is None:
        copied[index]["content"] = text
    else:
        copied[index]["content"] = [dict(piece) for piece in copied[index]["content"]]
        copied[index]["content"][part]["text"] = text
    return copied


def literal_spans(messages: list[dict], tokenizer, full: str, add_generation_prompt: bool = False,
                  chat_template: str | None = None) -> list[tuple[int, int]]:
    """Character spans of `full` (the rendered conversation) holding message text with control-token text.

    Each such text is swapped for a private-use marker and the template rendered again: where a
    marker lands, the text stands in `full` (as is, or stripped by a template that trims). A template
    that rewrites such a text some other way gets a `DataError`: it cannot be encoded safely.
    """
    _, tokens, pattern = _control_entry(tokenizer)
    risky = [(index, part, text) for index, part, text in _text_slots(messages) if pattern and pattern.search(text)]
    if not risky:
        return []
    marked = messages
    for number, (index, part, _) in enumerate(risky):
        marked = _with_text(marked, index, part, f"\ue000{number}\ue001")
    template_text = render(marked, tokenizer, add_generation_prompt, chat_template)
    spans, position, cursor = [], 0, 0
    for number, (index, _, text) in enumerate(risky):
        marker = f"\ue000{number}\ue001"
        at = template_text.find(marker, cursor)
        before = template_text[cursor:at]
        if at < 0 or not full.startswith(before, position):
            raise _unsafe(index, text, tokens)
        position += len(before)
        placed = next((candidate for candidate in (text, text.strip()) if full.startswith(candidate, position)), None)
        if placed is None:
            raise _unsafe(index, text, tokens)
        spans.append((position, position + len(placed)))
        position, cursor = position + len(placed), at + len(marker)
    if full[position:] != template_text[cursor:]:
        raise _unsafe(risky[-1][0], risky[-1][2], tokens)
    return spans


def _unsafe(index: int, text: str, tokens: list[str]) -> DataError:
    token = find_control_text(text, tokens)
    return DataError(f"message {index} holds the control-token text {token!r} and the chat template rewrites it, "
                     "so it cannot be encoded as plain text; remove it from the data")


def _split_literal(segments: list[tuple[str, bool]], spans: list[tuple[int, int]]) -> list[tuple[str, bool, bool]]:
    """Cut `(text, trained)` pieces of the rendered text at `spans`: `(text, trained, literal)` pieces."""
    cuts = sorted({edge for span in spans for edge in span})
    pieces, start = [], 0
    for text, trained in segments:
        end = start + len(text)
        edges = [start] + [cut for cut in cuts if start < cut < end] + [end]
        for left, right in zip(edges, edges[1:]):
            literal = any(low <= left and right <= high for low, high in spans)
            pieces.append((text[left - start:right - start], trained, literal))
        start = end
    return [piece for piece in pieces if piece[0] or piece[1]]


# ---------------------------------------------------------------------------------------------
# Rendering and encoding


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
    through = full if index == len(messages) - 1 else render(messages[: index + 1], tokenizer)  # the last turn: all of it
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


def image_expander(num_image_tokens, image_token_id: int):
    """A function giving the ids of the next image, in order: `num_image_tokens` copies of the image token
    (an int: every image alike, Llava), or each image's own ids (a sequence of id lists: Idefics3 tiles)."""
    if isinstance(num_image_tokens, int):
        return lambda: [image_token_id] * num_image_tokens
    remaining = iter(num_image_tokens)

    def next_image() -> list[int]:
        ids = next(remaining, None)
        if ids is None:
            raise DataError(f"the text has more {IMAGE_PLACEHOLDER} placeholders than the sample has images")
        return list(ids)

    return next_image


def _encode_text(text: str, tokenizer, next_image, literal: bool = False) -> tuple[list[int], int, int]:
    """Token ids of `text` with each placeholder expanded by `next_image()`; (ids, number of images, end of the last).

    `literal` text (message text holding control-token text) is encoded with special-token parsing
    off; a tokenizer that ignores that request gets a `DataError` rather than forged turns.
    """
    pieces = text.split(IMAGE_PLACEHOLDER)
    ids: list[int] = []
    image_end = 0
    for index, piece in enumerate(pieces):
        if index:
            ids += next_image()
            image_end = len(ids)
        if piece and literal:
            ids += _encode_plain(piece, tokenizer)
        elif piece:
            ids += tokenizer.encode(piece, add_special_tokens=False)
    return ids, len(pieces) - 1, image_end


def _encode_plain(text: str, tokenizer) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
    special_ids = {tokenizer.convert_tokens_to_ids(token) for token in control_tokens(tokenizer)}
    if special_ids & set(ids):
        raise DataError("this tokenizer cannot encode control-token text as plain text (split_special_tokens); "
                        "remove such text from the data")
    return ids


def _encode_pieces(pieces: list[tuple[str, bool, bool]], tokenizer, image_token_id: int,
                   num_image_tokens) -> tuple[list[int], list[int], int, int]:
    """(input ids, labels, number of images, end of the last image) of `(text, trained, literal)` pieces."""
    input_ids: list[int] = []
    labels: list[int] = []
    num_images = image_end = 0
    next_image = image_expander(num_image_tokens, image_token_id)
    for text, trained, literal in pieces:
        ids, images, end = _encode_text(text, tokenizer, next_image, literal)
        if trained and images:
            raise DataError(f"an assistant turn holds {IMAGE_PLACEHOLDER}; only user turns may")
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
        num_images += images
        image_end = len(input_ids) - len(ids) + end if images else image_end
    return input_ids, labels, num_images, image_end


def encode_conversation(
    record_messages: list[dict],
    tokenizer,
    image_token: str,
    num_image_tokens,
    max_length: int | None,
    too_long: str = "drop",
) -> EncodedSample | None:
    """Tokenise a conversation for training; None when it is too long for `max_length` under `too_long`.

    `num_image_tokens`: an int (each `<image>` becomes that many image tokens, Llava) or one id list
    per image of the conversation, in order (what the processor writes for it, Idefics3 tiles).

    `too_long="drop"` refuses any sequence over `max_length`; `"truncate"` cuts text after the last
    image (never an image token) and still returns None when that is not enough or leaves nothing
    to train on. The caller counts the Nones.
    """
    if too_long not in TOO_LONG_POLICIES:
        raise DataError(f"unknown too-long policy {too_long!r} (use {' or '.join(TOO_LONG_POLICIES)})")
    image_token_id = token_id_of(tokenizer, image_token)
    segments = conversation_segments(record_messages, tokenizer)
    spans = literal_spans(record_messages, tokenizer, "".join(text for text, _ in segments))
    pieces = _split_literal(segments, spans)
    sample = EncodedSample(*_encode_pieces(pieces, tokenizer, image_token_id, num_image_tokens))
    if max_length is None or len(sample.input_ids) <= max_length:
        return sample
    if max_length < 1:
        return None  # nothing fits (and a negative slice would cut from the end)
    return _truncate(sample, max_length, image_token_id) if too_long == "truncate" else None


def _truncate(sample: EncodedSample, max_length: int, image_token_id: int) -> EncodedSample | None:
    """Cut to `max_length` when every image token survives and some label remains."""
    if sample.image_end > max_length:
        return None
    cut = EncodedSample(sample.input_ids[:max_length], sample.labels[:max_length], sample.num_images, sample.image_end)
    return cut if cut.num_trained_tokens else None


def encode_prompt(messages: list[dict], tokenizer, image_token: str, num_image_tokens,
                  chat_template: str | None = None) -> list[int]:
    """Token ids of a prompt for generation: the template with the generation prompt, images expanded.

    Message text is encoded as training encodes it (control-token text stays plain text);
    `chat_template` (e.g. the processor's, which also takes content parts) overrides the tokenizer's.
    """
    text = render(messages, tokenizer, add_generation_prompt=True, chat_template=chat_template)
    spans = literal_spans(messages, tokenizer, text, add_generation_prompt=True, chat_template=chat_template)
    ids, _, _, _ = _encode_pieces(_split_literal([(text, False)], spans), tokenizer,
                               token_id_of(tokenizer, image_token), num_image_tokens)
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
