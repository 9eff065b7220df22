"""A multi-turn chat session over one model, and batch answering of request files.

The session keeps history and images across turns; each turn streams. Batch requests use the
same record format as training data (`messages` + `images`), so a test split can be answered
as it is: a trailing assistant turn (the reference) is dropped before generation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.images import load_image, resolve_image_path
from vlmforge.errors import DataError
from vlmforge.infer.generate import GenerationOptions, generate, stream

MIN_SAMPLING_TEMPERATURE = 1e-5  # below this, logits / temperature overflow float32: sample greedily


def sampling_temperature(temperature: float) -> float:
    """The temperature to generate with: a tiny positive one means greedy (its limit), never a NaN crash."""
    return 0.0 if temperature < MIN_SAMPLING_TEMPERATURE else temperature


def check_question(text: str) -> None:
    """A typed `<image>` would become a placeholder with no image behind it: refuse it in one line."""
    if IMAGE_PLACEHOLDER in text:
        raise DataError(f"the question contains '{IMAGE_PLACEHOLDER}'; attach images with --image PATH "
                        "(or /image PATH) instead: they are placed for you")


class ChatSession:
    """History of one conversation; `ask` streams the answer and records it."""

    def __init__(self, model, processor, options: GenerationOptions | None = None, system: str | None = None):
        self.model, self.processor = model, processor
        self.options = options or GenerationOptions()
        self.system = system
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self.images: list = []
        self.pending_images: list = []

    def attach(self, image) -> None:
        """Attach an image (PIL) to the next question."""
        self.pending_images.append(image)

    def ask(self, text: str) -> Iterator[str]:
        """Stream the answer to `text` (with any attached images); history is updated when done."""
        check_question(text)
        parts = [{"type": "image"} for _ in self.pending_images] + [{"type": "text", "text": text}]
        self.messages.append({"role": "user", "content": parts})
        self.images.extend(self.pending_images)
        self.pending_images = []
        answer = ""
        try:
            for piece in stream(self.model, self.processor, self.messages, self.images, self.options):
                answer += piece
                yield piece
        finally:
            self.messages.append({"role": "assistant", "content": answer})


def request_prompt(record: dict) -> list[dict]:
    """The messages to generate from: everything up to the last user turn."""
    messages = list(record["messages"])
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    return messages


def _record_images(record: dict, roots: Sequence[str | Path]) -> list:
    return [load_image(resolve_image_path(path, roots)) for path in record.get("images") or []]


def answer_records(model, processor, records: list[dict], options: GenerationOptions, batch_size: int = 8,
                   image_roots: Sequence[str | Path] = (), blank_images: bool = False, progress=None) -> list[dict]:
    """Answer request records in batches; returns `{"id", "prediction", ...}` per record, in order."""
    from PIL import Image

    results = []
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        conversations = [request_prompt(record) for record in batch]
        images = [_record_images(record, image_roots) for record in batch]
        if blank_images:  # same sizes, no content: how much does the model rely on the image?
            images = [[Image.new("RGB", image.size, (0, 0, 0)) for image in group] for group in images]
        for record, completion in zip(batch, generate(model, processor, conversations, images, options), strict=True):
            results.append({"id": record.get("id"), "prediction": completion.text,
                            "finish_reason": completion.finish_reason, "completion_tokens": completion.completion_tokens})
        if progress is not None:
            progress.update(len(batch))
    return results
