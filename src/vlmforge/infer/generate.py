"""Generation for any vlmforge model: batched with left padding, streamed, greedy or sampled.

Prompt ids come from the data layer's `encode_prompt`, the path training tokenises with (the
processor's chat template renders content parts; each image becomes the ids the processor would
write for it); the image processor only makes pixel values. So training and serving cannot drift,
and message text holding control-token text (`<|im_end|>`, `<|eot_id|>`, ...) stays plain text, as
in training: a user can never forge a turn.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.image_tokens import image_tokens_for, is_tiling
from vlmforge.data.tokenize import encode_prompt
from vlmforge.errors import DataError, ModelError


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


def _check_image_count(messages: list[dict], images: list, index: int) -> None:
    slots = count_image_slots(messages)
    if slots != len(images):
        raise DataError(f"conversation {index}: {slots} image placeholder(s) but {len(images)} image(s) given")


def prompt_token_ids(processor, messages: list[dict], images: list, index: int = 0) -> list[int]:
    """Token ids of one conversation's generation prompt, encoded by the data layer as training encodes it.

    The processor's chat template renders (it takes content parts); each image becomes the ids the
    processor would write for it (a constant run for Llava, the tile layout of its size for Idefics3).
    `index` names the conversation in the error raised when its placeholders and images differ in number.
    """
    _check_image_count(messages, images, index)
    tokens = _image_tokens(processor)
    per_image = tokens if isinstance(tokens, int) else [tokens.ids(*image.size) for image in images]
    return encode_prompt(messages, processor.tokenizer, processor.image_token, per_image,
                         chat_template=getattr(processor, "chat_template", None))


_IMAGE_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # processor -> image_tokens_for(processor)


def _image_tokens(processor):
    """`image_tokens_for(processor)`, asked once per processor (for Llava it runs the processor on one image)."""
    try:
        return _IMAGE_TOKENS[processor]
    except KeyError:
        tokens = _IMAGE_TOKENS[processor] = image_tokens_for(processor)
        return tokens
    except TypeError:  # not weakly referenceable: no cache
        return image_tokens_for(processor)


def pixel_inputs(processor, images: list[list]) -> dict:
    """The image processor's tensors for a batch's images (nothing when there are none).

    Llava: `pixel_values` (N_images, C, H, W), every image in order. Idefics3: one row per
    conversation, tiles zero-padded to the longest row, with `pixel_attention_mask`, as its processor
    pads them; the tile grids must be those `prompt_token_ids` wrote (computed from each image's size).
    """
    if not any(images):
        return {}
    if not is_tiling(processor):
        flat = [image for row in images for image in row]
        return {"pixel_values": processor.image_processor(flat, return_tensors="pt")["pixel_values"]}
    features = processor.image_processor(images, return_row_col_info=True, return_tensors="pt")
    tokens = _image_tokens(processor)
    for row_images, rows, cols in zip(images, features["rows"], features["cols"], strict=True):
        if [tokens.grid(*image.size) for image in row_images] != list(zip(rows, cols)):
            raise ModelError("the image processor cut an image into a tile grid other than the one computed "
                             "from its size; this processor's resizing is not supported")
    return {"pixel_values": features["pixel_values"], "pixel_attention_mask": features["pixel_attention_mask"]}


def prepare_inputs(processor, conversations: list[list[dict]], images: list[list],
                   prompt_ids: list[list[int]] | None = None):
    """A left-padded batch: prompt ids from the data layer (`prompt_ids` when already encoded), pixels from the image processor."""
    import torch
    from transformers import BatchFeature

    if len(conversations) != len(images):
        raise DataError(f"{len(conversations)} conversation(s) but {len(images)} image list(s)")
    rows = prompt_ids or [prompt_token_ids(processor, messages, row, index)
                          for index, (messages, row) in enumerate(zip(conversations, images))]
    width = max(len(ids) for ids in rows)
    pad = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    data = {
        "input_ids": torch.tensor([[pad] * (width - len(ids)) + ids for ids in rows]),  # (B, T) left padded
        "attention_mask": torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows]),  # (B, T)
    }
    return BatchFeature(data={**data, **pixel_inputs(processor, images)})


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


def _model_inputs(model, processor, conversations: list[list[dict]], images: list[list],
                  prompt_ids: list[list[int]] | None):
    """`prepare_inputs` on the model's device, pixel values in the model's dtype."""
    inputs = prepare_inputs(processor, conversations, images, prompt_ids).to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


def generate(model, processor, conversations: list[list[dict]], images: list[list],
             options: GenerationOptions | None = None, prompt_ids: list[list[int]] | None = None) -> list[Completion]:
    """Complete a batch of conversations; returns one `Completion` per conversation.

    `prompt_ids`: each conversation's `prompt_token_ids`, when the caller already has them (the
    server's worker encodes a request once, to check its length, and generates from those ids).
    """
    import torch

    options = options or GenerationOptions()
    inputs = _model_inputs(model, processor, conversations, images, prompt_ids)
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
           on_finish: Callable[[Completion], None] | None = None,
           prompt_ids: list[int] | None = None) -> Iterator[str]:
    """Yield the answer to one conversation piece by piece as it is generated.

    Closing the iterator early (a client that went away) stops the generation within a token.
    `on_finish`, when given, receives the `Completion` (token counts, finish reason) at the end;
    `prompt_ids` as for `generate` (this conversation's).
    """
    import torch
    from transformers import TextIteratorStreamer

    options = options or GenerationOptions()
    inputs = _model_inputs(model, processor, [messages], [images], None if prompt_ids is None else [prompt_ids])
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
