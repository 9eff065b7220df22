"""Generation for any vlmforge model: batched with left padding, streamed, greedy or sampled.

Prompts are rendered with the processor's chat template and images go through the processor's
image processor: the same rendering and preprocessing the data layer trains with. A conversation
whose text holds control-token text (`<|im_end|>`, `<|eot_id|>`, ...) is tokenised by the data
layer's `encode_prompt`, which keeps such text plain, so a user can never forge a turn.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.errors import DataError


@dataclass
class GenerationOptions:
    """Decoding settings; temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    use_cache: bool = True


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"


def count_image_slots(messages: list[dict]) -> int:
    """Number of images a conversation refers to: `<image>` in strings, or image parts."""
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += content.count(IMAGE_PLACEHOLDER)
        elif isinstance(content, list):
            total += sum(1 for part in content if part.get("type") in ("image", "image_url"))
    return total


def render_prompts(processor, conversations: list[list[dict]], images: list[list]) -> list[str]:
    """Chat-template each conversation with a generation prompt; placeholder counts must match images."""
    texts = []
    for index, (messages, conversation_images) in enumerate(zip(conversations, images, strict=True)):
        slots = count_image_slots(messages)
        if slots != len(conversation_images):
            raise DataError(
                f"conversation {index}: {slots} image placeholder(s) but {len(conversation_images)} image(s) given"
            )
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return texts


def prepare_inputs(processor, conversations: list[list[dict]], images: list[list]):
    """Tokenise a batch (left padded) with pixel values for every image, in order."""
    texts = render_prompts(processor, conversations, images)
    flat_images = [image for conversation_images in images for image in conversation_images]
    processor.tokenizer.padding_side = "left"
    batch = processor(text=texts, images=flat_images or None, padding=True, return_tensors="pt")
    return _keep_control_text_plain(batch, processor, conversations, images)


def _keep_control_text_plain(batch, processor, conversations: list[list[dict]], images: list[list]):
    """Re-tokenise (left padded) the rows whose message text holds control-token text, as training does.

    The processor parses special tokens inside the rendered text, so `<|im_end|>` typed by a user
    would close the turn; `encode_prompt` encodes message text with special-token parsing off.
    """
    from vlmforge.data.tokenize import control_text_in, encode_prompt

    risky = [row for row, messages in enumerate(conversations) if control_text_in(messages, processor.tokenizer)]
    if not risky:
        return batch
    import torch

    from vlmforge.data.image_tokens import image_tokens_for, is_tiling

    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    tiled = image_tokens_for(processor) if is_tiling(processor) else None  # Idefics3: ids depend on each image's size
    rows = []
    for row, (ids, mask) in enumerate(zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist())):
        ids = [token for token, keep in zip(ids, mask) if keep]
        if row in risky:
            per_image = ([tiled.ids(*image.size) for image in images[row]] if tiled
                         else ids.count(image_id) // max(len(images[row]), 1))
            ids = encode_prompt(conversations[row], processor.tokenizer, processor.image_token, per_image,
                                chat_template=getattr(processor, "chat_template", None))
        rows.append(ids)
    width = max(len(ids) for ids in rows)
    pad = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    batch["input_ids"] = torch.tensor([[pad] * (width - len(ids)) + ids for ids in rows])  # (B, T) left padded
    batch["attention_mask"] = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows])  # (B, T)
    return batch


def _generate_kwargs(model, processor, options: GenerationOptions) -> dict:
    import torch

    if options.seed is not None:
        torch.manual_seed(options.seed)
    sampling = options.temperature > 0
    kwargs = dict(
        max_new_tokens=options.max_new_tokens,
        do_sample=sampling,
        use_cache=options.use_cache,
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    if sampling:
        kwargs.update(temperature=options.temperature, top_p=options.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if options.stop:
        kwargs.update(stop_strings=list(options.stop), tokenizer=processor.tokenizer)
    return kwargs


def _trim_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def generate(model, processor, conversations: list[list[dict]], images: list[list],
             options: GenerationOptions | None = None) -> list[Completion]:
    """Complete a batch of conversations; returns one `Completion` per conversation."""
    import torch

    options = options or GenerationOptions()
    inputs = prepare_inputs(processor, conversations, images).to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.inference_mode():
        output = model.generate(**inputs, **_generate_kwargs(model, processor, options))
    prompt_length = inputs["input_ids"].shape[1]
    new_tokens = output[:, prompt_length:]  # (B, new)
    eos_ids = _eos_ids(model, processor)
    completions = []
    for row, mask_row in zip(new_tokens.tolist(), inputs["attention_mask"].tolist(), strict=True):
        produced = _strip_padding(row, eos_ids, processor.tokenizer.pad_token_id)
        text = processor.tokenizer.decode(produced, skip_special_tokens=True)
        text, stopped = _trim_at_stop(text, options.stop)
        completions.append(Completion(text, int(sum(mask_row)), len(produced), _finish_reason(stopped, produced, options)))
    return completions


def _finish_reason(stopped: bool, produced: list[int], options: GenerationOptions) -> str:
    return "stop" if stopped or len(produced) < options.max_new_tokens else "length"


def _eos_ids(model, processor) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = {ids} if isinstance(ids, int) else set(ids or [])
    if processor.tokenizer.eos_token_id is not None:
        ids.add(processor.tokenizer.eos_token_id)
    return ids


def _strip_padding(tokens: list[int], eos_ids: set[int], pad_id: int | None) -> list[int]:
    """Generated tokens up to (not including) the first end-of-turn; padding after it dropped."""
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[:position]
    if pad_id is not None:
        while tokens and tokens[-1] == pad_id and pad_id not in eos_ids:
            tokens = tokens[:-1]
    return tokens


def stream(model, processor, messages: list[dict], images: list,
           options: GenerationOptions | None = None,
           on_finish: Callable[[Completion], None] | None = None) -> Iterator[str]:
    """Yield the answer to one conversation piece by piece as it is generated.

    Closing the iterator early (a client that went away) stops the generation within a token.
    `on_finish`, when given, receives the `Completion` (token counts, finish reason) at the end.
    """
    import torch
    from transformers import TextIteratorStreamer

    options = options or GenerationOptions()
    inputs = prepare_inputs(processor, [messages], [images]).to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancelled = threading.Event()
    kwargs = _generate_kwargs(model, processor, options)
    kwargs["stopping_criteria"] = _stop_when_set(cancelled)
    outputs: list = []
    errors: list[BaseException] = []

    def work():
        try:
            with torch.inference_mode():
                outputs.append(model.generate(**inputs, **kwargs, streamer=streamer))
        except BaseException as error:  # surfaced in the caller's thread below
            errors.append(error)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    emitted, stopped = "", False
    try:
        for piece in streamer:
            candidate, stopped = _trim_at_stop(emitted + piece, options.stop)
            if candidate[len(emitted):]:
                yield candidate[len(emitted):]
            emitted = candidate
            if stopped:
                break
    finally:
        cancelled.set()  # no-op when generation already ended; stops it when the caller left early
        thread.join()
    if errors:
        raise errors[0]
    if on_finish is not None and outputs:
        prompt_length = inputs["input_ids"].shape[1]
        row = outputs[0][0, prompt_length:].tolist()  # (new,)
        produced = _strip_padding(row, _eos_ids(model, processor), processor.tokenizer.pad_token_id)
        on_finish(Completion(emitted, prompt_length, len(produced), _finish_reason(stopped, produced, options)))


def _stop_when_set(event: threading.Event):
    """A stopping criterion that ends generation for the whole batch once `event` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhenSet()])
