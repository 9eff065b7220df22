"""Caption metrics agree with pycocoevalcap; English tokenisation matches the PTB tokenizer; Chinese uses jieba."""

import json
import shutil
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from vlmforge.eval import java_metrics
from vlmforge.eval.caption_metrics import bleu, caption_scores, cider_d, rouge_l
from vlmforge.eval.text import detect_lang, tokenize, tokenize_chinese, tokenize_english

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def load_tokenized(name: str, lang: str):
    examples = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    hypotheses = [tokenize(example["prediction"], lang) for example in examples]
    references = [[tokenize(ref, lang) for ref in example["references"]] for example in examples]
    return hypotheses, references


def pycocoevalcap_scores(hypotheses, references):
    """pycocoevalcap's scorers on the same words (space-joined, as its PTB step leaves them)."""
    res = {i: [" ".join(hyp)] for i, hyp in enumerate(hypotheses)}
    gts = {i: [" ".join(ref) for ref in refs] for i, refs in enumerate(references)}
    bleu_scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge_mean, rouge_each = Rouge().compute_score(gts, res)
    cider_mean, cider_each = Cider().compute_score(gts, res)
    return bleu_scores, (rouge_mean, list(rouge_each)), (cider_mean, list(cider_each))


@pytest.mark.parametrize(("name", "lang"), [("captions_en.json", "en"), ("captions_zh.json", "zh")])
def test_agrees_with_pycocoevalcap(name, lang):
    hypotheses, references = load_tokenized(name, lang)
    expected_bleu, expected_rouge, expected_cider = pycocoevalcap_scores(hypotheses, references)

    assert bleu(hypotheses, references) == pytest.approx(expected_bleu, abs=1e-9)
    rouge_mean, rouge_each = rouge_l(hypotheses, references)
    assert rouge_mean == pytest.approx(expected_rouge[0], abs=1e-9)
    assert rouge_each == pytest.approx(expected_rouge[1], abs=1e-9)
    cider_mean, cider_each = cider_d(hypotheses, references)
    assert cider_mean == pytest.approx(expected_cider[0], abs=1e-9)
    assert cider_each == pytest.approx(expected_cider[1], abs=1e-9)
    assert 0.1 < expected_bleu[3] < 1 and expected_cider[0] > 0.1  # a corpus with real overlap, not a trivial case


def test_agrees_with_pycocoevalcap_without_any_4gram_match():
    hypotheses = [["a", "dog"], ["zebras"]]
    references = [[["a", "dog", "runs", "on", "grass"], ["the", "dog", "is", "running"]], [["a", "man", "plays", "tennis"]]]
    expected_bleu, _, (expected_cider, _) = pycocoevalcap_scores(hypotheses, references)
    assert bleu(hypotheses, references) == pytest.approx(expected_bleu, abs=1e-12)
    assert cider_d(hypotheses, references)[0] == pytest.approx(expected_cider, abs=1e-12)


def test_empty_hypothesis_scores_zero_and_perfect_one_scores_high():
    hypotheses = [[], "a man riding a wave on a surfboard".split()]
    references = [[["two", "dogs", "play"]], [hypotheses[1], "a surfer on a big wave".split()]]
    corpus, per_example = caption_scores(hypotheses, references)
    assert per_example["ROUGE-L"][0] == 0.0 and per_example["CIDEr-D"][0] == 0.0
    assert per_example["ROUGE-L"][1] == pytest.approx(1.0)
    assert set(corpus) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"}


def test_english_tokenisation_matches_the_ptb_tokenizer():
    captions = (FIXTURES / "english_captions.txt").read_text(encoding="utf-8").splitlines()
    expected = (FIXTURES / "ptb_tokenized.txt").read_text(encoding="utf-8").splitlines()
    assert len(captions) == len(expected) > 40
    for caption, ptb in zip(captions, expected):
        assert " ".join(tokenize_english(caption)) == ptb, caption


def test_english_tokenisation_drops_brackets_unlike_pycocoevalcap():
    assert tokenize_english("Two cats (sleeping) on a sofa!!") == ["two", "cats", "sleeping", "on", "a", "sofa"]


def test_chinese_is_cut_into_jieba_words_without_punctuation():
    assert tokenize_chinese("两个男人在球场上打篮球。") == ["两个", "男人", "在", "球场上", "打篮球"]
    assert tokenize_chinese("一只小狗，在草地上 奔跑！") == ["一只", "小狗", "在", "草地", "上", "奔跑"]
    assert tokenize_chinese("这是iPhone手机") == ["这是", "iphone", "手机"]


def test_language_detection_and_forcing():
    assert detect_lang(["A dog.", "一只狗"]) == "zh"
    assert detect_lang("A dog on the grass") == "en"
    assert tokenize("一只狗", "en") == ["一只狗"]  # forced English: no word cutting


def test_java_metrics_are_skipped_with_a_reason(monkeypatch):
    _, skipped = java_metrics.java_caption_metrics(["一只 狗"], [["一只 狗"]], lang="zh")
    assert skipped == {"METEOR": "English only", "SPICE": "English only"}
    monkeypatch.setattr(java_metrics.shutil, "which", lambda name: None)
    scores, skipped = java_metrics.java_caption_metrics(["a dog"], [["a dog"]], lang="en")
    assert scores == {} and skipped == {"METEOR": "Java not found on PATH", "SPICE": "Java not found on PATH"}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_meteor_runs_when_java_is_there():
    hypotheses, references = load_tokenized("captions_en.json", "en")
    scores, skipped = java_metrics.java_caption_metrics(
        [" ".join(h) for h in hypotheses], [[" ".join(r) for r in refs] for refs in references], lang="en"
    )
    assert 0.1 < scores["METEOR"] < 1
    assert "SPICE" in scores or "SPICE" in skipped
