"""Caption tokenisation for scoring: language detection, English the PTB way, Chinese with jieba.

English follows what the COCO caption evaluation gets from Stanford's PTBTokenizer followed by
pycocoevalcap's punctuation filter: lowercase, clitics split off (`don't` -> `do n't`,
`man's` -> `man 's`), punctuation dropped, while tokens such as `black-and-white`, `3.5`, `1,000`,
`u.s.` and the symbols `$ % & #` are kept. Two pycocoevalcap quirks are deliberately not copied:
brackets (it keeps `-lrb-` / `-rrb-`) and runs like `!!` (it keeps them); we drop both.

Chinese is cut into words with jieba (accurate mode), as the AI Challenger caption benchmark
did, then punctuation (full-width included) is dropped and Latin letters are lowercased.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from functools import lru_cache

LANGUAGES = ("en", "zh")

# CJK Unified Ideographs (+ extension A) and the CJK compatibility block.
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

_CLITIC = re.compile(r"(?<=[^\W_])(n't|'(?:s|re|ve|ll|d|m))\b")
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "wanna": "wan na", "gotta": "got ta"}
_ALNUM = r"[^\W_]"
_ENGLISH_TOKEN = re.compile(
    r"n't|'(?:s|re|ve|ll|d|m)\b"  # clitics split off above
    r"|(?:[^\W\d_]\.){2,}"  # abbreviations with dots: u.s. p.m.
    r"|\b(?:mr|mrs|ms|dr|st|jr|sr|mt|prof|vs)\."  # titles the PTB knows
    rf"|{_ALNUM}+(?:(?:[-&'/@.]|(?<=\d)[,:](?=\d)){_ALNUM}+)*"  # words, hyphenated words, 3.5, 1,000, 5:30
    r"|[$%&#]"  # symbols the PTB keeps as tokens
)


def has_cjk(text: str) -> bool:
    """True when `text` contains a Chinese (CJK) character."""
    return _CJK.search(text) is not None


def detect_lang(texts: str | list[str]) -> str:
    """`"zh"` when any of `texts` contains a CJK character, else `"en"`."""
    texts = [texts] if isinstance(texts, str) else texts
    return "zh" if any(has_cjk(text) for text in texts) else "en"


def check_lang(lang: str | None) -> str | None:
    """Validate a forced language (None means detect)."""
    if lang is not None and lang not in LANGUAGES:
        from vlmforge.errors import ConfigError

        raise ConfigError(f"unknown language {lang!r}: use one of {', '.join(LANGUAGES)} (or leave it unset to detect)")
    return lang


def tokenize(text: str, lang: str) -> list[str]:
    """Words of a caption for scoring, in `lang` ("en" or "zh")."""
    return tokenize_chinese(text) if lang == "zh" else tokenize_english(text)


def tokenize_english(text: str) -> list[str]:
    """PTB-style words: lowercased, clitics split, punctuation dropped."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = _CLITIC.sub(r" \1", text)
    tokens = _ENGLISH_TOKEN.findall(text)
    return [piece for token in tokens for piece in _SPLIT_WORDS.get(token, token).split()]


def tokenize_chinese(text: str) -> list[str]:
    """jieba words (accurate mode) without punctuation or spaces; Latin letters lowercased."""
    words = _jieba().cut(text.strip(), cut_all=False)
    return [word.lower() for word in (w.strip() for w in words) if word and not _is_punctuation(word)]


def _is_punctuation(token: str) -> bool:
    return all(unicodedata.category(char)[0] in "PZ" for char in token)


@lru_cache(maxsize=1)
def _jieba():
    """Import jieba once, with its start-up chatter silenced (it logs to stderr at DEBUG)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba
