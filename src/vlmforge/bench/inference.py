"""Generation speed: time to first token and decode tokens/s, batch 1 and 8, KV cache on.

Two paths over the same exported (LoRA merged) model and the same prompts:
- `vlmforge`: `vlmforge.infer.generate.generate` (prompt ids from `data.tokenize`, pixels from the image processor, left padding);
- `plain`: what a user writes with transformers alone (`apply_chat_template`, the processor, `model.generate`).
TTFT is a one-token generation (preprocessing + prefill + first token); decode tokens/s is
B·(N−1) / (t_N − t_1). `min_new_tokens` makes every run produce exactly N tokens (random weights
would otherwise stop at any end-of-turn token).
"""

from __future__ import annotations

import time


def prompts_from_records(records: list[dict], root, count: int) -> tuple[list[list[dict]], list[list]]:
    """The first user turn of the first `count` image records, as (conversations, images)."""
    from PIL import Image

    conversations, images = [], []
    for record in records:
        if not record.get("images"):
            continue
        conversations.append([record["messages"][0]])
        images.append([Image.open(root / record["images"][0]).convert("RGB")])
        if len(conversations) == count:
            break
    return conversations, images


def generate_vlmforge(model, processor, conversations, images, new_tokens: int) -> None:
    from vlmforge.infer.generate import GenerationOptions, generate

    generate(model, processor, conversations, images, GenerationOptions(max_new_tokens=new_tokens))


def generate_plain(model, processor, conversations, images, new_tokens: int) -> None:
    import torch

    texts = [processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) for messages in conversations]
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=texts, images=[image for row in images for image in row], padding=True, return_tensors="pt")
    inputs = inputs.to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)


PATHS = {"vlmforge": generate_vlmforge, "plain": generate_plain}


def _seconds(function, model, processor, conversations, images, new_tokens: int) -> float:
    """Wall time of one generation of exactly `new_tokens` tokens per row."""
    from vlmforge.bench.machine import synchronize

    model.generation_config.min_new_tokens = new_tokens
    synchronize(model.device)
    started = time.perf_counter()
    function(model, processor, conversations, images, new_tokens)
    synchronize(model.device)
    return time.perf_counter() - started


def _rates(batch: int, new_tokens: int, first: float, full: float) -> dict:
    decode = full - first
    return {"batch": batch, "new_tokens": new_tokens, "ttft_ms": first * 1000,
            "decode_tokens_per_s": batch * (new_tokens - 1) / decode if decode > 0 else None}


def measure_batch(model, processor, conversations, images, new_tokens: int, repeats: int = 3) -> dict:
    """{path: {"ttft_ms", "decode_tokens_per_s", ...}} at one batch size; the paths take turns and each
    keeps its fastest time (a busy machine only ever adds time)."""
    first = {path: [] for path in PATHS}
    full = {path: [] for path in PATHS}
    for path, function in PATHS.items():
        _seconds(function, model, processor, conversations, images, 2)  # warm-up
    for _ in range(repeats):
        for path, function in PATHS.items():
            first[path].append(_seconds(function, model, processor, conversations, images, 1))
            full[path].append(_seconds(function, model, processor, conversations, images, new_tokens))
    return {path: _rates(len(conversations), new_tokens, min(first[path]), min(full[path])) for path in PATHS}


def measure_inference(model, processor, records: list[dict], root, batches, new_tokens: int, repeats: int = 3) -> dict:
    """Both paths at each batch size: {"dtype", "vlmforge": {"batch_1": ...}, "plain": {...}}."""
    result: dict = {"dtype": str(model.dtype).removeprefix("torch."), "vlmforge": {}, "plain": {}}
    saved = model.generation_config.min_new_tokens
    try:
        for batch in batches:
            conversations, images = prompts_from_records(records, root, batch)
            for path, rates in measure_batch(model, processor, conversations, images, new_tokens, repeats).items():
                result[path][f"batch_{batch}"] = rates
    finally:
        model.generation_config.min_new_tokens = saved
    return result
