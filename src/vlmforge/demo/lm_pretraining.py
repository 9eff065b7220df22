"""Pre-train the demo's tiny Qwen2 LM from scratch on its conversations, the image given as 9 cell words.

    samples = lm_samples(records, tokenizer)                 # every turn of every conversation
    folder = pretrain_language_model(samples, tokenizer, "parts/llm", steps=1500, composition=...)

Text becomes ids and labels the way vlmforge trains every model: `data.tokenize.encode_conversation`
(the tokenizer's chat template, loss on the assistant replies and their end-of-turn token), batches
are padded by `train.batching.pad_samples` and grouped by length by `data.dataset.LengthGroupedSampler`,
and the learning rate follows `train.loop.cosine_with_warmup`.

Four things are the demo's own, all measured in docs/demo.md:
- **cell words** (`cell_words`) stand in for the image, their embeddings tied to the words that name
  their content and place (`composition`), so answers are already inside the cells' vectors;
- **a lookup hint**: besides the next-token loss, the first `lookup_heads` heads of the last layer are
  trained to look, from the position that predicts each answer word, at the cell the question asks
  about (`meta.turn_cells` of the synthetic records; in a caption, the cell whose place was named
  last), and head 0 of the first layer at the question's words that name that cell. Finding a named
  cell among nine is the skill a from-scratch 2-layer LM learns slowly on its own;
- **a relay for follow-ups** (`_relay_follow_ups`): a question asked after the image cannot be read
  by the cells, so its words naming the asked cell look at it (first layer) and the answer looks at
  those words (last layer);
- **a copy start** (`start_as_copy`): the last layer's value and output projections start as the
  identity, and the first layer's too when follow-ups are relayed, so the hinted heads write what they
  look at (without it, answers stayed at chance for 800 steps with the attention already on the right
  cell; without the first layer's, the relayed LM reached 81 % against 98.8 % with it).
The hint and the copy start shape pre-training only: the saved model is a plain Qwen2 causal LM, and
the VLM stages train it with the ordinary loss.

The saved folder (model + tokenizer) loads with `AutoModelForCausalLM` / `AutoTokenizer`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.tokenize import IGNORE_INDEX, EncodedSample, encode_conversation, encode_prompt
from vlmforge.demo.cell_words import (CONTENTS, cell_word_composition, composed_embedding_matrix, place_words,
                                      record_cell_words)
from vlmforge.data.synth_scenes import GRID_SIZE
from vlmforge.demo.training_loop import run_steps, update, write_metrics
from vlmforge.errors import ConfigError, DataError

logger = logging.getLogger(__name__)



@dataclass
class LmSample:
    """One conversation as training ids, with what the hint trains: `lookups`, (query position, key position)
    pairs for the last layer; `question_words`, (query position, positions of the question's words naming the
    asked cell) for the first layer's head 0; `relays`, (position of a follow-up's word naming the asked cell,
    the cell's position) for the first layer's other heads."""

    encoded: EncodedSample
    lookups: list[tuple[int, int]] = field(default_factory=list)
    question_words: list[tuple[int, list[int]]] = field(default_factory=list)
    relays: list[tuple[int, int]] = field(default_factory=list)


def cell_word_messages(record: dict) -> list[dict]:
    """The record's messages with its `<image>` placeholder replaced by the scene's 9 cell words."""
    cells = record_cell_words(record)
    return [{"role": message["role"], "content": message["content"].replace(IMAGE_PLACEHOLDER, cells).strip("\n")}
            for message in record["messages"]]


def lm_samples(records: list[dict], tokenizer) -> list[LmSample]:
    """Every record as an `LmSample`; a record's `meta.turn_cells` (if any) gives its hint targets."""
    cell_ids, weights = cell_word_composition(tokenizer)
    naming = {int(cell): set(row.nonzero().flatten().tolist()) for cell, row in zip(cell_ids, weights)}
    cell_of = {int(cell): index // len(CONTENTS) for index, cell in enumerate(cell_ids)}  # cell-major order
    forms_per_place = len(place_words()) // GRID_SIZE**2
    place_cells = {tokenizer.convert_tokens_to_ids(word): index // forms_per_place for index, word in enumerate(place_words())}
    samples = []
    for record in records:
        encoded = encode_conversation(cell_word_messages(record), tokenizer, IMAGE_PLACEHOLDER, 0, None)
        cells = _cell_positions(encoded.input_ids, cell_of)
        turn_cells = record.get("meta", {}).get("turn_cells")
        lookups = (_lookups(encoded, turn_cells, cells) if turn_cells
                   else _caption_lookups(encoded, cells, place_cells))
        words = _question_words(encoded, lookups, naming)
        lookups, relays = _relay_follow_ups(encoded, lookups, words, cells)
        samples.append(LmSample(encoded, lookups, words, relays))
    return samples


def _answer_spans(labels: list[int]) -> list[tuple[int, int]]:
    """(first, last) position of each trained span's words, its end-of-turn token left out."""
    spans, start = [], None
    for i, label in enumerate(labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, max(start, i - 2)))  # i - 1 is the end-of-turn token
            start = None
    return spans


def _cell_positions(ids: list[int], cell_of: dict[int, int]) -> dict[int, int]:
    """{grid cell: position of its cell word} (empty for a text without an image)."""
    return {cell_of[token]: i for i, token in enumerate(ids) if token in cell_of}


def _lookups(encoded: EncodedSample, turn_cells: list | None, cells: dict[int, int]) -> list[tuple[int, int]]:
    """(position that predicts a word of turn i's answer, position of the cell turn i asks about), for
    every answer word (not the end-of-turn token: it is the same whatever the cell holds)."""
    if not turn_cells or not cells:
        return []
    return [(position - 1, cells[cell]) for (first, last), cell in zip(_answer_spans(encoded.labels), turn_cells)
            if cell is not None for position in range(first, last + 1)]


def _caption_lookups(encoded: EncodedSample, cells: dict[int, int], place_cells: dict) -> list[tuple[int, int]]:
    """In a reply that names places ("top left: nothing; top middle: an orange square; ..."), each word after
    a place name looks at that place's cell: (position that predicts it, cell position). Every word, not
    only the content words: BPE cuts Chinese ("红色正方形") where it likes."""
    ids, labels = encoded.input_ids, encoded.labels
    if not cells:
        return []
    lookups, current = [], None
    for i in range(1, len(ids)):
        if labels[i] == IGNORE_INDEX:
            current = None
        elif ids[i] in place_cells:
            current = cells[place_cells[ids[i]]]
        elif current is not None and i + 1 < len(ids) and labels[i + 1] != IGNORE_INDEX:  # not the end of turn
            lookups.append((i - 1, current))
    return lookups


def _question_words(encoded: EncodedSample, lookups: list[tuple[int, int]], naming: dict) -> list[tuple[int, list[int]]]:
    """For each answer's first word: (its query position, the positions of the words in the question just
    asked that name the asked cell, e.g. "circle" in "What color is the circle?")."""
    ids, labels, targets = encoded.input_ids, encoded.labels, []
    for query, cell in lookups:
        if labels[query] != IGNORE_INDEX:  # not an answer's first word
            continue
        start = query
        while start > 0 and labels[start - 1] == IGNORE_INDEX:  # back to the end of the previous answer
            start -= 1
        words = [i for i in range(start, query) if ids[i] in naming[ids[cell]]]
        if words:
            targets.append((query, words))
    return targets


def _relay_follow_ups(encoded: EncodedSample, lookups: list[tuple[int, int]], question_words: list[tuple[int, list[int]]],
                      cells: dict[int, int]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Route the lookups of questions asked after the image through the question's words: (lookups, relays).

    A first question comes before the image, so the cells read it (first layer) and the answer only has
    to find the cell that was asked about. A follow-up comes after the cells, which cannot read it: there
    the answer looked at the cell the *first* question asked about (74 % / 62 % right at 1 000 steps).
    Relayed, the follow-up's words naming the asked cell fetch its content (first layer, `relays`) and
    the answer reads the last such word (last layer, its lookups' key): 100 % / 96 % (docs/demo.md)."""
    if not cells:
        return lookups, []
    after_image = {query: words for query, words in question_words if words[0] > max(cells.values())}
    routed, relays, words, previous = [], [], None, None
    for query, cell in lookups:
        if query in after_image or previous is None or query != previous + 1:  # a new answer
            words = after_image.get(query)
            relays += [(word, cell) for word in words or []]
        routed.append((query, words[-1] if words else cell))
        previous = query
    return routed, relays


def make_language_model(vocab_size: int, hidden_size: int, num_layers: int, tokenizer, seed: int,
                        num_heads: int | None = None):
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
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def pretrain_language_model(
    samples: list[LmSample],
    tokenizer,
    out_dir: str | Path,
    *,
    steps: int,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int | None = None,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    warmup_fraction: float = 0.05,
    min_lr_ratio: float = 0.1,
    lookup_weight: float = 1.0,
    lookup_heads: int = 1,
    composition=None,
) -> Path:
    """Train a Qwen2 LM from scratch on `samples`, save it with the tokenizer; returns `out_dir`.

    `lookup_weight` scales the lookup hint's loss (0: next-token loss only, no copy start);
    `lookup_heads` is how many heads of the last layer it trains (the first ones; the others stay free,
    e.g. for counting). `composition` (cell ids, weights), from `cell_word_composition`: those rows of
    the embedding matrix are the weighted sums of other rows during training, and are saved so.
    """
    import numpy as np
    import torch

    from vlmforge.data.dataset import LengthGroupedSampler
    from vlmforge.train.loop import cosine_with_warmup

    if not samples:
        raise DataError("language-model pre-training got no samples")
    model = make_language_model(len(tokenizer), hidden_size, num_layers, tokenizer, seed, num_heads)
    model.set_attn_implementation("eager")  # the hint reads attention weights
    if lookup_weight and lookup_heads:
        start_as_copy(model.model.layers[-1].self_attn)  # the hint's heads then pass on what they look at
        if any(sample.relays for sample in samples):
            start_as_copy(model.model.layers[0].self_attn)  # and the relay's heads what they fetch
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(max(1, round(warmup_fraction * steps)), steps, min_lr_ratio))
    sampler = LengthGroupedSampler([len(s.encoded.input_ids) for s in samples], batch_size, seed=seed)
    batches = _endless_batches(sampler)
    pad_id = tokenizer.pad_token_id

    def step(_progress: float) -> float:
        batch = [samples[int(i)] for i in next(batches)]
        token_loss, lookup_loss = _losses(model, batch, pad_id, composition, lookup_heads)
        update(optimizer, token_loss + lookup_weight * lookup_loss, model.parameters(), 1.0, schedule)
        return token_loss.item()

    loop = run_steps(step, steps, None, desc="language model", model=model)
    model.set_attn_implementation("sdpa")
    if composition is not None:
        _write_composed_rows(model, composition)
    metrics = {**loop.summary(), "samples": len(samples), "parameters": sum(p.numel() for p in model.parameters()),
               "mean_length": round(float(np.mean([len(s.encoded.input_ids) for s in samples])), 1)}
    logger.info("language model: %d steps in %.1fs, loss %.3f → %.3f", loop.steps, loop.seconds,
                metrics["first_loss"], metrics["final_loss"])
    return _save_language_folder(model, tokenizer, out_dir, metrics)


def _endless_batches(sampler):
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from sampler.batches()
        epoch += 1


def start_as_copy(attention) -> None:
    """Start an attention layer as a copy: value and output projections the identity, so what a head
    reads from a token is what it writes (the looked-up cell word itself, whose vector holds the words
    of the answer). From random projections, reading the answer off the looked-up cell stayed at
    chance for 800 steps even with the attention already on the right cell; from the identity it is
    learned in about 500 (docs/demo.md)."""
    import torch

    with torch.no_grad():
        for projection in (attention.v_proj, attention.o_proj):
            if projection.weight.shape[0] != projection.weight.shape[1]:
                raise ConfigError("a copy start needs as many value dimensions as hidden ones (one KV head per head)")
            projection.weight.copy_(torch.eye(projection.weight.shape[0]))
            if projection.bias is not None:
                projection.bias.zero_()


def _losses(model, batch: list[LmSample], pad_id: int, composition, lookup_heads: int = 1):
    """(next-token loss on the replies, lookup-hint loss): the mean negative log attention weight that the
    last layer's first `lookup_heads` heads put on each lookup's key, plus the first layer's terms: head 0 on
    the question's naming words (summed), the other heads on the cell each relay word names."""
    import torch
    import torch.nn.functional as F

    from vlmforge.train.batching import pad_samples

    padded = pad_samples([sample.encoded for sample in batch], pad_id)
    labels = padded["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    trained = labels != IGNORE_INDEX
    out = model.model(inputs_embeds=_embed(model, padded["input_ids"], composition),
                      attention_mask=padded["attention_mask"], output_attentions=True, use_cache=False)
    hidden = out.last_hidden_state[:, :-1][trained]  # (N, D): logits only where a token is trained
    token_loss = F.cross_entropy(model.lm_head(hidden), labels[trained])
    rows = [(row, query, key) for row, sample in enumerate(batch) for query, key in sample.lookups]
    if not rows:
        return token_loss, token_loss.new_zeros(())
    row, query, key = (torch.tensor(column) for column in zip(*rows))
    weights = out.attentions[-1][row, :lookup_heads, query, key]  # (L, lookup_heads)
    lookup_loss = -torch.log(weights + 1e-6).mean()
    words = [(row, group, query, key) for row, sample in enumerate(batch)
             for group, (query, keys) in enumerate(sample.question_words) for key in keys]
    if words:  # first layer, head 0: from the answer's position, the question's words naming the cell
        row, group, query, key = (torch.tensor(column) for column in zip(*words))
        groups = row * (1 + int(group.max())) + group
        on_words = out.attentions[0][row, 0, query, key]  # (W,)
        summed = torch.zeros(int(groups.max()) + 1).index_add(0, groups, on_words)[groups.unique()]
        lookup_loss = lookup_loss - torch.log(summed.clamp(max=1.0) + 1e-6).mean()
    relays = [(row, query, key) for row, sample in enumerate(batch) for query, key in sample.relays]
    if relays:  # first layer, the other heads: from a follow-up's naming word, the cell it names
        row, query, key = (torch.tensor(column) for column in zip(*relays))
        lookup_loss = lookup_loss - torch.log(out.attentions[0][row, 1:, query, key] + 1e-6).mean()
    return token_loss, lookup_loss


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


def _save_language_folder(model, tokenizer, out_dir: str | Path, metrics: dict) -> Path:
    out_dir = Path(out_dir)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_metrics(out_dir, metrics)
    return out_dir


def text_answer_accuracy(model, tokenizer, records: list[dict]) -> dict:
    """Greedy answers to each record's last question, the image given as cell words and earlier turns as
    recorded; exact-match accuracy per record type and language: {"overall": x, "colour": {"en": x}, ...}."""
    import torch

    hits = defaultdict(list)
    for record in records:
        messages = cell_word_messages(record)
        prompt = encode_prompt(messages[:-1], tokenizer, IMAGE_PLACEHOLDER, 0)
        input_ids = torch.tensor([prompt])
        with torch.no_grad():
            output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=8,
                                    do_sample=False)
        answer = tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()
        hits[(record["type"], record["lang"])].append(answer == messages[-1]["content"])
    table = defaultdict(dict)
    for (qtype, lang), results in sorted(hits.items()):
        table[qtype][lang] = round(sum(results) / len(results), 4)
    all_hits = [hit for results in hits.values() for hit in results]
    return {"overall": round(sum(all_hits) / max(1, len(all_hits)), 4), **table}
