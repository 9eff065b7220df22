"""VQA exact match after the standard answer normalisation, in English and Chinese.

English follows the official VQA evaluation (vqaEval.py): lowercase; punctuation removed, except
a period inside a number (`3.5`) and thousands commas squeezed (`1,000` -> `1000`); number words
`zero`..`ten` (and `none`) -> digits; articles `a an the` dropped; apostrophe-less contractions
repaired (`dont` -> `don't`). Chinese adds: full-width forms folded to ASCII (NFKC), Chinese
punctuation removed, spaces next to Chinese characters removed, and a Chinese count with a
measure word turned into digits (`两个` -> `2`, `三只猫` -> `3猫`, `3个` -> `3`; a bare `三` -> `3`).

A prediction is correct when its normalised form equals that of any reference answer (exact match).
When every question has several human answers (VQAv2 has 10), the official VQA accuracy is reported
too, and is the headline score: each answer left out in turn, min(1, matching others / 3), averaged —
an answer that 3 of 10 annotators gave scores 0.9, one that a single annotator gave 0.3.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't",
    "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't",
    "hes": "he's", "im": "i'm", "isnt": "isn't", "itd": "it'd", "ive": "i've", "shes": "she's",
    "shouldnt": "shouldn't", "thats": "that's", "theres": "there's", "theyre": "they're",
    "wasnt": "wasn't", "werent": "weren't", "whats": "what's", "wont": "won't", "wouldnt": "wouldn't",
    "youre": "you're", "youve": "you've",
}  # fmt: skip
_KEPT_SYMBOLS = set("'%$&#.:")  # '.' and ':' are dealt with on their own below

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CHINESE_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_CHINESE_NUMERAL = "零〇一二两三四五六七八九十百"
_MEASURE_WORDS = "个只条辆位名张本头匹棵件台把块支双对座朵间层架艘根盏瓶杯碗盘片枚颗粒部份种次岁"
_CHINESE_COUNT = re.compile(rf"([{_CHINESE_NUMERAL}]+)(?=[{_MEASURE_WORDS}])")
_DIGITS_THEN_MEASURE = re.compile(rf"(\d+)[{_MEASURE_WORDS}]")
# [digit]百 [零] [[digit]十] [digit]: hundreds, tens, units
_CHINESE_NUMBER_PATTERN = re.compile(r"(?:([一二两三四五六七八九])百)?(零)?(?:([一二两三四五六七八九])?(十))?([一二两三四五六七八九〇零])?")
_SPACE_NEXT_TO_CJK = re.compile(rf"(?<=[{_CJK}])\s+|\s+(?=[{_CJK}])")


def normalize_answer(answer: str) -> str:
    """The normalised form of a VQA answer (English or Chinese)."""
    text = unicodedata.normalize("NFKC", answer).lower().replace("\u2019", "'")
    text = _strip_punctuation(text)
    words = [_CONTRACTIONS.get(word, _NUMBER_WORDS.get(word, word)) for word in text.split()]
    text = " ".join(word for word in words if word not in _ARTICLES)
    return _normalize_chinese(text)


def _strip_punctuation(text: str) -> str:
    text = re.sub(r"(?<=\d),(?=\d)", "", text)  # 1,000 -> 1000
    text = re.sub(r"\.(?!\d)", "", text)  # periods go, unless a digit follows (3.5)
    text = re.sub(r"(?<!\d):|:(?!\d)", " ", text)  # colons go, unless inside a time (12:30)
    return "".join(" " if _is_punctuation(char) else char for char in text)


def _is_punctuation(char: str) -> bool:
    return char not in _KEPT_SYMBOLS and unicodedata.category(char)[0] in "PS"


def _normalize_chinese(text: str) -> str:
    text = _SPACE_NEXT_TO_CJK.sub("", text)
    if text and all(char in _CHINESE_NUMERAL for char in text):
        return _chinese_number_text(text)
    text = _CHINESE_COUNT.sub(lambda match: _chinese_number_text(match.group(1)), text)
    return _DIGITS_THEN_MEASURE.sub(r"\1", text)


def _chinese_number_text(numeral: str) -> str:
    """Digits for a Chinese numeral up to 999 (`二十三` -> `23`); the numeral itself if it is not one."""
    value = chinese_numeral_value(numeral)
    return numeral if value is None else str(value)


def chinese_numeral_value(numeral: str) -> int | None:
    """Value of `一`, `两`, `十二`, `二十`, `一百零五`, ...; None for anything else (`七八` = "7 or 8")."""
    match = _CHINESE_NUMBER_PATTERN.fullmatch(numeral)
    if not numeral or match is None:
        return None
    hundreds, zero, tens, ten_mark, units = match.groups()
    if zero and not hundreds:
        return 0 if numeral in ("零", "〇") else None
    value = _CHINESE_DIGITS[hundreds] * 100 if hundreds else 0
    if ten_mark:
        value += (_CHINESE_DIGITS[tens] if tens else 1) * 10
    return value + (_CHINESE_DIGITS[units] if units else 0)


def exact_match(prediction: str, references: list[str]) -> bool:
    """True when the normalised prediction equals any normalised reference."""
    return any(_matches(prediction, references))


def _matches(prediction: str, references: list[str]) -> list[bool]:
    """Per reference: does its normalised form equal the prediction's?"""
    predicted = normalize_answer(prediction)
    return [predicted == normalize_answer(reference) for reference in references]


MIN_ANSWERS_FOR_VQA_ACCURACY = 3  # fewer human answers than this: the soft score means nothing


def vqa_accuracy(prediction: str, references: list[str]) -> float:
    """The official VQA accuracy of one prediction against the human answers (duplicates count)."""
    if not references:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    return _soft_score(_matches(prediction, references))


def _soft_score(matches: list[bool]) -> float:
    total = sum(matches)
    return sum(min(1.0, (total - match) / 3) for match in matches) / len(matches)


def vqa_scores(
    predictions: list[str], references: list[list[str]], types: list[str | None], langs: list[str]
) -> tuple[dict, list[float]]:
    """Exact match (and VQA accuracy when every question has several human answers) overall, per
    question type (when any is given) and per language; plus the headline score per example."""
    matches = [_matches(p, refs) for p, refs in zip(predictions, references, strict=True)]
    per_metric = {"exact_match": [float(any(row)) for row in matches]}
    if matches and all(len(row) >= MIN_ANSWERS_FOR_VQA_ACCURACY for row in matches):
        per_metric["vqa_accuracy"] = [_soft_score(row) for row in matches]
    scores = {name: _mean(values) for name, values in per_metric.items()}
    scores["by_lang"] = _grouped(per_metric, langs)
    if any(qtype is not None for qtype in types):
        scores["by_type"] = _grouped(per_metric, [qtype or "(none)" for qtype in types])
    return scores, per_metric.get("vqa_accuracy", per_metric["exact_match"])


def _grouped(per_metric: dict[str, list[float]], groups: list[str]) -> dict[str, dict]:
    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    return {
        group: {**{name: _mean([values[i] for i in indices]) for name, values in per_metric.items()},
                "num_examples": len(indices)}
        for group, indices in sorted(members.items())
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
