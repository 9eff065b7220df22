"""Text helpers of the converters: caption cleaning and prompt sets with a seeded, stable choice.

    clean_caption("A man riding  a\\nbike. ")  -> "A man riding a bike."
    clean_caption("一个男人\\r\\n在骑车。")        -> "一个男人在骑车。"
    pick_prompt(shipped_prompts("caption_en.txt"), seed=0, record_id="coco-42")
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path

from vlmforge.errors import ConfigError

_CJK = "\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef"
_SPACE_BETWEEN_CJK = re.compile(f"(?<=[{_CJK}]) (?=[{_CJK}])")


def clean_caption(text: str) -> str:
    """Collapse every whitespace run (spaces, tabs, line breaks) to one space and strip the ends;
    a space left between two CJK characters is removed (Chinese has no word spaces)."""
    return _SPACE_BETWEEN_CJK.sub("", " ".join(text.split()))


def load_prompts(path) -> list[str]:
    """Prompts of a file (a path or a package resource), one per line; blank lines and `#` comments skipped."""
    path = Path(path) if isinstance(path, str) else path
    if not path.is_file():
        raise ConfigError(f"prompt file not found: {path}")
    text = path.read_text(encoding="utf-8")
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError(f"prompt file {path} holds no prompt")
    return prompts


def shipped_prompts(name: str) -> list[str]:
    """A prompt set shipped in `vlmforge/data/prompts/` (e.g. `caption_en.txt`)."""
    return load_prompts(resources.files("vlmforge.data").joinpath("prompts", name))


def pick_prompt(prompts: list[str], seed: int, record_id: str) -> str:
    """The prompt of one record: a stable hash of (seed, record id), independent of record order."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return prompts[int.from_bytes(digest[:8], "big") % len(prompts)]
