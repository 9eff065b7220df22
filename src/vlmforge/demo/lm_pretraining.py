"""Pre-train a tiny Qwen2 causal LM from scratch on the demo's conversations, rendered with its chat template.

The texts come from `conversation_texts`: each synthetic record's conversation, with the `<image>`
placeholder replaced by the scene's 9 cell words ("cells", see `cell_words`), its caption ("top
left: a red circle; top middle: nothing; …") or dropped. With cell words, the LM learns to answer
from 9 tokens in the places of the 9 image tokens, so the VLM stages only have to teach the
projector to "write" each cell's word into its image token. `text_answer_accuracy` measures
exactly that skill on held-out records. With `composition` (from `cell_word_composition`), each
cell word's embedding is tied to the words that name it during training and written so at the end.

The saved folder (model + tokenizer) loads with `AutoModelForCausalLM` / `AutoTokenizer`.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import defaultdict
from pathlib import Path

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.synth import scene_of_record
from vlmforge.data.synth_language import describe_scene
from vlmforge.demo.cell_words import composed_embedding_matrix, record_cell_words
from vlmforge.demo.training_loop import run_steps, write_metrics
from vlmforge.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

IMAGE_TEXT_MODES = ("caption", "cells", "drop")
LOSS_ON = ("all", "assistant")
# A ChatML assistant turn: the header (a prompt token) and the reply up to and including <|im_end|>.
_ASSISTANT_TURN = re.compile(r"(<\|im_start\|>assistant\n)(.*?<\|im_end\|>)", re.S)


def conversation_messages(record: dict, image_text: str = "caption") -> list[dict]:
    """The record's messages with `<image>` replaced by the scene caption ("caption"), its 9 cell words
    ("cells") or removed ("drop")."""
    if image_text not in IMAGE_TEXT_MODES:
        raise ConfigError(f"image_text must be one of {IMAGE_TEXT_MODES}, got {image_text!r}")
    stand_in = ""
    if image_text == "caption":
        stand_in = describe_scene(scene_of_record(record), record["lang"])
    elif image_text == "cells":
        stand_in = record_cell_words(record)
    messages = []
    for message in record["messages"]:
        content = message["content"].replace(IMAGE_PLACEHOLDER, stand_in).strip("\n")
        messages.append({"role": message["role"], "content": content})
    return messages


def conversation_texts(records: list[dict], tokenizer, image_text: str = "caption") -> list[str]:
    """Every record's conversation rendered with the tokenizer's chat template (`image_text` as above)."""
    return [
        tokenizer.apply_chat_template(conversation_messages(record, image_text), tokenize=False)
        for record in records
    ]


def make_language_model(vocab_size: int, hidden_size: int, num_layers: int, tokenizer, seed: int,
                        num_heads: int | None = None, rope_theta: float = 10_000.0):
    """A fresh Qwen2 LM with tied embeddings; `num_heads` defaults to one head per 32 dimensions."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    num_heads = num_heads or max(1, hidden_size // 32)
    if hidden_size % num_heads:
        raise ConfigError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def pretrain_language_model(
    texts: list[str],
    tokenizer,
    out_dir: str | Path,
    *,
    max_steps: int | None = None,
    max_seconds: float | None = 90.0,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int | None = None,
    rope_theta: float = 10_000.0,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    warmup_fraction: float = 0.05,
    loss_on: str = "all",
    bf16: bool = False,
    composition=None,
) -> Path:
    """Train a Qwen2 LM from scratch on ChatML `texts`, save it with the tokenizer; returns `out_dir`.

    `loss_on="all"` trains next-token prediction on every token, "assistant" on the replies only.
    bf16 autocast is off by default: at this size its casts cost more than its GEMMs save on CPU.
    Batches are drawn from texts of similar length (little padding). `composition` (cell ids,
    weights), from `cell_word_composition`: those rows of the embedding matrix are the weighted sums
    of other rows during training, and are saved so.
    """
    import torch

    if loss_on not in LOSS_ON:
        raise ConfigError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    if not texts:
        raise DataError("language-model pre-training got no texts")
    encoded = [encode_with_assistant_mask(text, tokenizer) for text in texts]
    model = make_language_model(len(tokenizer), hidden_size, num_layers, tokenizer, seed, num_heads, rope_theta)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01, betas=(0.9, 0.95))
    batches = LengthBuckets(encoded, batch_size, seed)

    def step(progress: float) -> float:
        _set_learning_rate(optimizer, learning_rate * _warmup_cosine(progress, warmup_fraction))
        input_ids, attention_mask, labels = _padded_batch(batches.sample(), tokenizer, loss_on == "assistant")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(inputs_embeds=_embed(model, input_ids, composition), attention_mask=attention_mask,
                         labels=labels, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    model.train()
    loop = run_steps(step, max_steps, max_seconds, desc="language model")
    model.eval()
    if composition is not None:
        _write_composed_rows(model, composition)
    metrics = {
        **loop.summary(),
        "texts": len(texts),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    logger.info("language model: %d steps in %.1fs, loss %.3f → %.3f", loop.steps, loop.seconds,
                metrics["first_loss"], metrics["final_loss"])
    return _save_language_folder(model, tokenizer, out_dir, metrics)


class LengthBuckets:
    """Random batches of texts of similar length, so a batch of short questions is not padded to
    caption length: texts are sorted by length (ties in random order); a batch is `batch_size`
    texts drawn from the window of 2 × `batch_size` neighbours around a random text."""

    def __init__(self, encoded: list, batch_size: int, seed: int):
        self.rng = random.Random(seed)
        tie_break = [self.rng.random() for _ in encoded]
        order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i][0]), tie_break[i]))
        self.sorted = [encoded[i] for i in order]
        self.batch_size = min(batch_size, len(encoded))

    def sample(self) -> list:
        window = min(2 * self.batch_size, len(self.sorted))
        start = min(max(0, self.rng.randrange(len(self.sorted)) - self.batch_size), len(self.sorted) - window)
        return self.rng.sample(self.sorted[start:start + window], self.batch_size)


def _embed(model, input_ids, composition):
    """Input embeddings (B, T, D) of `input_ids` (B, T), composed cell-word rows included."""
    import torch.nn.functional as F

    weight = model.get_input_embeddings().weight  # (V, D)
    if composition is not None:
        weight = composed_embedding_matrix(weight, composition)
    return F.embedding(input_ids, weight)


def _write_composed_rows(model, composition) -> None:
    import torch

    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        weight.copy_(composed_embedding_matrix(weight, composition))


def _warmup_cosine(progress: float, warmup_fraction: float) -> float:
    if progress < warmup_fraction:
        return (progress + 1e-3) / warmup_fraction
    done = (progress - warmup_fraction) / max(1e-9, 1.0 - warmup_fraction)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))


def _set_learning_rate(optimizer, learning_rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate


def encode_with_assistant_mask(text: str, tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids of a ChatML text and, per token, whether it belongs to an assistant reply.

    Pieces are tokenised one by one; special tokens and the newline after the role already split
    byte-level BPE there, so the ids equal those of the whole text.
    """
    ids, mask, position = [], [], 0

    def add(piece: str, is_reply: bool):
        piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        ids.extend(piece_ids)
        mask.extend([is_reply] * len(piece_ids))

    for match in _ASSISTANT_TURN.finditer(text):
        add(text[position : match.end(1)], False)
        add(match.group(2), True)
        position = match.end()
    add(text[position:], False)
    return ids, mask


def _padded_batch(sequences: list[tuple[list[int], list[bool]]], tokenizer, replies_only: bool):
    """Right-pad (ids, reply mask) pairs to the longest; returns input_ids, attention_mask, labels, each (B, T)."""
    import torch

    longest = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), longest), tokenizer.pad_token_id)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    trained = torch.zeros((len(sequences), longest), dtype=torch.bool)
    for row, (ids, reply_mask) in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        trained[row, : len(ids)] = torch.tensor(reply_mask) if replies_only else True
    labels = input_ids.masked_fill(~trained, -100)
    return input_ids, attention_mask, labels


def _save_language_folder(model, tokenizer, out_dir: str | Path, metrics: dict) -> Path:
    out_dir = Path(out_dir)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_metrics(out_dir, metrics)
    return out_dir


def text_answer_accuracy(model, tokenizer, records: list[dict], image_text: str = "caption") -> dict:
    """Greedy answers to each record's first question, the image replaced as in training; exact-match
    accuracy per question type and language: {"overall": x, "colour": {"en": x, "zh": y}, ...}."""
    import torch

    hits = defaultdict(list)
    for record in records:
        question = conversation_messages(record, image_text)[:1]
        prompt = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
        input_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            output = model.generate(input_ids, max_new_tokens=8, do_sample=False)
        answer = tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()
        hits[(record["type"], record["lang"])].append(answer == record["messages"][1]["content"])
    table = defaultdict(dict)
    for (qtype, lang), results in sorted(hits.items()):
        table[qtype][lang] = round(sum(results) / len(results), 4)
    all_hits = [hit for results in hits.values() for hit in results]
    return {"overall": round(sum(all_hits) / max(1, len(all_hits)), 4), **table}
