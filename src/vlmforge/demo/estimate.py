"""How long `vlmforge demo` will take on this machine, measured before it starts (about a second).

    step = measure_lm_step_seconds()                  # one training step of the demo's LM, here and now
    seconds = estimate_stage_seconds(budget, step)    # {"data": 2.0, "parts": 600.1, ...}

The demo's time is mostly small training steps whose speed depends on the CPU (AVX-512 or AVX2 only,
cores, other load), so one figure cannot be right everywhere: it took 7 min on a 2-core Xeon and 16 on
a 2-core EPYC. The probe times a few steps of the demo's language model (its shape, batch and typical
length, random tokens); each stage's cost, counted in those steps from a measured reference run, is
scaled by the step time measured here.
"""

from __future__ import annotations

import time

# The reference run (seed 0 of the default budget, 2-core AMD EPYC, torch's 2 threads, alone on the
# machine; 2026-12-02, LM of 4 heads): its probe step took 103.9 ms, the LM's 1 000 steps 96.3 s.
REFERENCE_STEP_SECONDS = 96.25 / 1000
# Its other stage times, per unit of work: data 12.5 s for 21 200 scenes; parts, besides the LM's steps,
# 14.6 s for 300 vision steps (with loading the images and the probe), ~15 ms per text answer of the LM
# alone (240) and the rest, 34.5 s, for the 11 000 pre-training records (tokenizer, encoding); build
# under 1 s; align 14.2 s for 80 steps; instruct 82.9 s for 400 steps; eval 6.1 s for 2 × 1200 answers.
SECONDS_PER_SCENE = 12.5 / 21_200
SECONDS_PER_VISION_STEP = 14.6 / 300
SECONDS_PER_RECORD = 34.5 / 11_000
SECONDS_PER_TEXT_ANSWER = 0.015
BUILD_SECONDS = 0.4
SECONDS_PER_ALIGN_STEP = 14.2 / 80
SECONDS_PER_INSTRUCT_STEP = 82.9 / 400
SECONDS_PER_EVAL_ANSWER = 6.1 / 2400
# The probe's batch: 32 random texts of ~36 tokens, a vocabulary of 640 (the demo's are longer and larger:
# STEP_PER_PROBE_STEP carries the difference).
PROBE_BATCH, PROBE_LENGTH, PROBE_VOCAB = 32, 36, 640
# A real step (composed cell words, the lookup hint's eager attention, logits only where trained)
# against the probe's plain step: 96.3 / 103.9 ms in the reference run. (The probe is noisy: ±20 % between
# two probes in one session; the previous reference, with 8 heads of 16, had 90.2 / 80.8 ms.)
STEP_PER_PROBE_STEP = 0.926


def measure_lm_step_seconds(max_seconds: float = 1.0, warmup_steps: int = 2, timed_steps: int = 5) -> float:
    """Seconds of one training step (forward, backward, AdamW) of the demo's LM on this machine: the
    probe's median step × `STEP_PER_PROBE_STEP`.

    Stops timing after `max_seconds` (at least one timed step), so a slow machine is not made to wait."""
    import torch

    from vlmforge.demo.pipeline import LM_SHAPE

    model, optimizer, batch = _probe_model(torch, LM_SHAPE)
    times = []
    started = time.perf_counter()
    for step in range(warmup_steps + timed_steps):
        step_started = time.perf_counter()
        loss = model(**batch, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss.item()
        if step >= warmup_steps:
            times.append(time.perf_counter() - step_started)
            if time.perf_counter() - started > max_seconds:
                break
    return sorted(times)[len(times) // 2] * STEP_PER_PROBE_STEP


def _probe_model(torch, shape: dict):
    """A Qwen2 LM of the demo's shape, its optimizer and one random batch (input_ids, mask, labels)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, heads = shape["hidden_size"], shape["num_heads"]
    config = Qwen2Config(vocab_size=PROBE_VOCAB, hidden_size=hidden, intermediate_size=hidden * 4,
                         num_hidden_layers=shape["num_layers"], num_attention_heads=heads, num_key_value_heads=heads,
                         head_dim=hidden // heads, tie_word_embeddings=True)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, PROBE_VOCAB, (PROBE_BATCH, PROBE_LENGTH), generator=generator)  # (B, T)
    # Texts of similar, not equal, length: a padded batch, as the demo's (a padding mask costs time).
    lengths = torch.randint(PROBE_LENGTH - 6, PROBE_LENGTH + 1, (PROBE_BATCH, 1), generator=generator)
    attention_mask = (torch.arange(PROBE_LENGTH) < lengths).long()  # (B, T)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask,
             "labels": input_ids.masked_fill(attention_mask == 0, -100)}
    model = Qwen2ForCausalLM(config).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3), batch


def reference_stage_seconds(budget) -> dict[str, float]:
    """Each stage's seconds in the reference run's terms, for `budget` (a `DemoBudget`)."""
    align_steps, instruct_steps = _recipe_steps(budget)
    return {
        "data": (budget.num_train + budget.num_test) * SECONDS_PER_SCENE,
        "parts": (budget.lm_steps * REFERENCE_STEP_SECONDS + budget.vision_steps * SECONDS_PER_VISION_STEP
                  + (min(budget.num_train, budget.lm_records) + budget.lm_captions) * SECONDS_PER_RECORD
                  + min(budget.num_test, budget.lm_text_answers) * SECONDS_PER_TEXT_ANSWER),
        "build": BUILD_SECONDS,
        "align": align_steps * SECONDS_PER_ALIGN_STEP,
        "instruct": instruct_steps * SECONDS_PER_INSTRUCT_STEP,
        "eval": 2 * budget.num_test * SECONDS_PER_EVAL_ANSWER,
    }


def estimate_stage_seconds(budget, step_seconds: float) -> dict[str, float]:
    """Each stage's expected seconds here: the reference's, scaled by this machine's measured LM step."""
    speed = step_seconds / REFERENCE_STEP_SECONDS
    return {stage: seconds * speed for stage, seconds in reference_stage_seconds(budget).items()}


def _recipe_steps(budget) -> tuple[int, int]:
    """The align and instruct step counts: the budget's, else the shipped recipes' `max_steps`."""
    from vlmforge.train.recipe import load_recipe

    align = budget.align_steps or load_recipe("demo-align").train.max_steps
    instruct = budget.instruct_steps or load_recipe("demo-instruct-lora").train.max_steps
    return align, instruct
