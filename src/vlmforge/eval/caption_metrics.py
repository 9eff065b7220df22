"""Caption metrics computed the COCO-caption way: BLEU-1..4, ROUGE-L and CIDEr-D.

Every example has one hypothesis and several references, all already tokenised (lists of words,
see `vlmforge.eval.text`). The formulas are those of pycocoevalcap, the implementation users
quote, and `tests/test_eval_caption_metrics.py` checks agreement with it:

- BLEU: corpus level; clipped n-gram counts summed over the corpus; brevity penalty from the
  reference length closest to each hypothesis (ties to the shorter one); pycocoevalcap's tiny
  smoothing constants, so a corpus without any 4-gram match still scores what it reports.
- ROUGE-L: per example, LCS precision and recall maximised over references, F with beta 1.2.
- CIDEr-D: TF-IDF n-gram vectors (n = 1..4) with document frequencies counted over the
  references of the corpus, clipped cosine similarity, Gaussian length penalty (sigma 6),
  averaged over references and n, times 10.

METEOR and SPICE need Java: see `vlmforge.eval.java_metrics`.
"""

from __future__ import annotations

import math
from collections import Counter

Tokens = list[str]

MAX_N = 4
ROUGE_BETA = 1.2
CIDER_SIGMA = 6.0
_TINY, _SMALL = 1e-15, 1e-9  # pycocoevalcap's BLEU smoothing


def ngram_counts(tokens: Tokens, max_n: int = MAX_N) -> Counter:
    """Counts of every n-gram (as a tuple) for n = 1..max_n."""
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


# ---------------------------------------------------------------------------------------- BLEU


def bleu(hypotheses: list[Tokens], references: list[list[Tokens]], max_n: int = MAX_N) -> list[float]:
    """Corpus BLEU-1..max_n (a list of max_n scores in [0, 1])."""
    correct, guessed = [0] * max_n, [0] * max_n
    hypothesis_length = reference_length = 0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        hypothesis_length += len(hypothesis)
        reference_length += _closest_length(len(hypothesis), [len(ref) for ref in refs])
        clipped = _clipped_matches(hypothesis, refs, max_n)
        for n in range(max_n):
            correct[n] += clipped[n]
            guessed[n] += max(0, len(hypothesis) - n)
    return _bleu_from_totals(correct, guessed, hypothesis_length, reference_length)


def _closest_length(hypothesis_length: int, reference_lengths: list[int]) -> int:
    return min((abs(length - hypothesis_length), length) for length in reference_lengths)[1]


def _clipped_matches(hypothesis: Tokens, refs: list[Tokens], max_n: int) -> list[int]:
    """Per n: hypothesis n-grams matched, each clipped to its largest count in any one reference."""
    max_ref_counts: Counter = Counter()
    for ref in refs:
        max_ref_counts |= ngram_counts(ref, max_n)  # `|` keeps the max count per n-gram
    matches = [0] * max_n
    for gram, count in ngram_counts(hypothesis, max_n).items():
        matches[len(gram) - 1] += min(count, max_ref_counts[gram])
    return matches


def _bleu_from_totals(correct: list[int], guessed: list[int], hyp_len: int, ref_len: int) -> list[float]:
    ratio = (hyp_len + _TINY) / (ref_len + _SMALL)
    brevity_penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    scores, product = [], 1.0
    for n, (matched, total) in enumerate(zip(correct, guessed)):
        product *= (matched + _TINY) / (total + _SMALL)
        scores.append(product ** (1 / (n + 1)) * brevity_penalty)
    return scores


# ------------------------------------------------------------------------------------- ROUGE-L


def rouge_l(hypotheses: list[Tokens], references: list[list[Tokens]]) -> tuple[float, list[float]]:
    """Mean ROUGE-L over examples, and the per-example scores."""
    per_example = [_rouge_l_one(hyp, refs) for hyp, refs in zip(hypotheses, references, strict=True)]
    return _mean(per_example), per_example


def _rouge_l_one(hypothesis: Tokens, refs: list[Tokens]) -> float:
    if not hypothesis:
        return 0.0
    lcs = [_lcs_length(ref, hypothesis) for ref in refs]
    precision = max(length / len(hypothesis) for length in lcs)
    recall = max((length / len(ref) for length, ref in zip(lcs, refs) if ref), default=0.0)
    if precision == 0 or recall == 0:
        return 0.0
    beta2 = ROUGE_BETA**2
    return (1 + beta2) * precision * recall / (recall + beta2 * precision)


def _lcs_length(a: Tokens, b: Tokens) -> int:
    """Length of the longest common subsequence, one row of the DP table at a time."""
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0]
        for j, token_b in enumerate(b):
            current.append(previous[j] + 1 if token_a == token_b else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


# ------------------------------------------------------------------------------------- CIDEr-D


def cider_d(hypotheses: list[Tokens], references: list[list[Tokens]]) -> tuple[float, list[float]]:
    """Mean CIDEr-D over examples, and the per-example scores (document frequencies from `references`)."""
    ref_counts = [[ngram_counts(ref) for ref in refs] for refs in references]
    document_frequency = _document_frequency(ref_counts)
    log_corpus_size = math.log(len(references)) if references else 0.0
    per_example = []
    for hypothesis, counts_of_refs in zip(hypotheses, ref_counts, strict=True):
        hyp_vector = _tfidf(ngram_counts(hypothesis), document_frequency, log_corpus_size)
        ref_vectors = [_tfidf(counts, document_frequency, log_corpus_size) for counts in counts_of_refs]
        sims = [_clipped_cosine(hyp_vector, ref_vector) for ref_vector in ref_vectors]
        per_example.append(10.0 * sum(sims) / len(sims))
    return _mean(per_example), per_example


def _document_frequency(ref_counts: list[list[Counter]]) -> Counter:
    """For each n-gram, the number of examples whose references contain it."""
    frequency: Counter = Counter()
    for counts_of_refs in ref_counts:
        frequency.update(set().union(*counts_of_refs))
    return frequency


class _TfIdf:
    """A caption's TF-IDF vectors, one per n-gram order, their norms, and its length."""

    def __init__(self, vectors: list[dict], norms: list[float], length: int):
        self.vectors, self.norms, self.length = vectors, norms, length


def _tfidf(counts: Counter, document_frequency: Counter, log_corpus_size: float) -> _TfIdf:
    vectors: list[dict] = [{} for _ in range(MAX_N)]
    for gram, term_frequency in counts.items():
        idf = log_corpus_size - math.log(max(1.0, document_frequency[gram]))
        vectors[len(gram) - 1][gram] = term_frequency * idf
    norms = [math.sqrt(sum(value * value for value in vector.values())) for vector in vectors]
    # pycocoevalcap measures length in bigrams (its `n == 1` is the bigram index); kept for agreement.
    length = sum(counts[gram] for gram in vectors[1])
    return _TfIdf(vectors, norms, length)


def _clipped_cosine(hyp: _TfIdf, ref: _TfIdf) -> float:
    """Mean over n of the clipped cosine similarity, times the Gaussian length penalty."""
    penalty = math.exp(-((hyp.length - ref.length) ** 2) / (2 * CIDER_SIGMA**2))
    total = 0.0
    for n in range(MAX_N):
        ref_vector = ref.vectors[n]
        dot = sum(min(value, ref_vector.get(gram, 0.0)) * ref_vector.get(gram, 0.0) for gram, value in hyp.vectors[n].items())
        if hyp.norms[n] != 0 and ref.norms[n] != 0:
            dot /= hyp.norms[n] * ref.norms[n]
        total += dot * penalty
    return total / MAX_N


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# ------------------------------------------------------------------------------------- all three


def caption_scores(
    hypotheses: list[Tokens], references: list[list[Tokens]]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Corpus metrics {"BLEU-1".."BLEU-4", "ROUGE-L", "CIDEr-D"} and per-example ROUGE-L / CIDEr-D."""
    _check_references(references)
    bleu_scores = bleu(hypotheses, references)
    rouge_mean, rouge_each = rouge_l(hypotheses, references)
    cider_mean, cider_each = cider_d(hypotheses, references)
    corpus = {f"BLEU-{n + 1}": score for n, score in enumerate(bleu_scores)}
    corpus.update({"ROUGE-L": rouge_mean, "CIDEr-D": cider_mean})
    return corpus, {"ROUGE-L": rouge_each, "CIDEr-D": cider_each}


def _check_references(references: list[list[Tokens]]) -> None:
    if any(not refs for refs in references):
        raise ValueError("every example needs at least one reference")
