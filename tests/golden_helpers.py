"""What the golden-value tests pin, computed from the current code (tests/test_golden.py compares).

Both the test and `tests/fixtures/golden/regenerate.py` call these functions, so the stored
values and the checked values come from one definition. Nothing here compares vlmforge with
itself: the stored JSON is the other side, written once and reviewed in the diff.
"""

from __future__ import annotations

from pathlib import Path

from data_helpers import LABEL_CONVERSATIONS, make_tokenizer, marked_training_text
from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.tokenize import encode_conversation

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "golden"
TOKENS_FILE = GOLDEN_DIR / "tokens.json"
LOSSES_FILE = GOLDEN_DIR / "losses.json"
REGENERATE = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python tests/fixtures/golden/regenerate.py"
NUM_IMAGE_TOKENS = 3

TEXT_ONLY = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "How many people are there?"},
    {"role": "assistant", "content": "There are three people."},
    {"role": "user", "content": "有几个人？"},
    {"role": "assistant", "content": "图中有三个人在草地上玩球。"},
]

# en: system turn + image + two assistant turns (one with a blank line); zh: image, two turns, no
# system turn; text: system turn, no image, English then Chinese.
CONVERSATIONS = {"en": LABEL_CONVERSATIONS["en"], "zh": LABEL_CONVERSATIONS["zh"], "text": TEXT_ONLY}
STYLES = ("chatml", "llama3")  # Qwen2's ChatML and a Llama-3 header/eot template

# The tiny loss run: the shipped instruct-lora recipe as shipped (learning rates, warm-up ratio,
# LoRA rank/alpha/dropout 0.05, grad_accum 2, weight decay, seed), four steps of batch 4 in fp32 on CPU.
LOSS_SETTINGS = dict(max_steps=4, batch_size=4, save_steps=4, log_steps=1)


def token_cases() -> dict:
    """{"<style>/<name>": {"input_ids", "labels", "marked"}} of every golden conversation."""
    cases = {}
    for style in STYLES:
        tokenizer = make_tokenizer(style)
        for name, messages in CONVERSATIONS.items():
            sample = encode_conversation(messages, tokenizer, IMAGE_PLACEHOLDER, NUM_IMAGE_TOKENS, None)
            cases[f"{style}/{name}"] = {"input_ids": sample.input_ids, "labels": sample.labels,
                                        "marked": marked_training_text(messages, tokenizer, NUM_IMAGE_TOKENS)}
    return cases


def build_tiny_vlm(folder: Path) -> Path:
    """The tests' tiny SigLIP + Qwen2 VLM (as conftest's `tiny_vlm_dir`), built from configs with fixed seeds."""
    from vlmforge.model.build import BuildConfig, build_vlm, save_vlm
    from vlmforge.model.tiny import make_tiny_llm, make_tiny_vision

    vision = make_tiny_vision(folder / "siglip", "siglip")
    llm = make_tiny_llm(folder / "qwen2", "qwen2")
    model, processor = build_vlm(BuildConfig(vision=str(vision), llm=str(llm)))
    return save_vlm(model, processor, folder / "vlm")


def run_rows(model_dir: Path, workdir: Path, **changes) -> list[dict]:
    """The pinned columns of each logged step (loss, learning rates, padding) of the tiny run."""
    from train_helpers import shipped_recipe, write_colour_dataset
    from vlmforge.train.loop import train

    data = write_colour_dataset(workdir / "data")
    recipe = shipped_recipe("instruct-lora", model_dir, data, workdir / "run", **{**LOSS_SETTINGS, **changes})
    return [{key: row[key] for key in PINNED_COLUMNS} for row in train(recipe).history]


PINNED_COLUMNS = ("step", "loss", "lr_projector", "lr_llm", "pad_fraction")
