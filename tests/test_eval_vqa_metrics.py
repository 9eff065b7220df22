"""VQA answer normalisation (English as vqaEval.py, Chinese additions) and exact-match grouping."""

import pytest

from vlmforge.eval.vqa_metrics import chinese_numeral_value, exact_match, normalize_answer, vqa_accuracy, vqa_scores


@pytest.mark.parametrize(
    ("answer", "normalized"),
    [
        ("Two", "2"),
        ("two dogs", "2 dogs"),
        ("The dog.", "dog"),
        ("a Dog!", "dog"),
        ("an apple", "apple"),
        ("on the table", "on table"),
        ("none", "0"),
        ("Ten", "10"),
        ("1,000", "1000"),
        ("3.5", "3.5"),
        ("12:30", "12:30"),
        ("Yes.", "yes"),
        ("right?", "right"),
        ("black-and-white", "black and white"),
        ("dont know", "don't know"),
        ("it\u2019s red", "it's red"),
        ("  Red   and  white ", "red and white"),
    ],
)
def test_english_normalisation(answer, normalized):
    assert normalize_answer(answer) == normalized


@pytest.mark.parametrize(
    ("answer", "normalized"),
    [
        ("两个", "2"),
        ("三个", "3"),
        ("3个", "3"),
        ("3 只", "3"),
        ("三", "3"),
        ("十二", "12"),
        ("二十三个", "23"),
        ("两个人", "2人"),
        ("三只猫", "3猫"),
        ("是的。", "是的"),
        ("（白色）", "白色"),
        ("“好”", "好"),
        ("１２", "12"),  # full-width digits
        ("红色，白色", "红色白色"),
        ("七八个", "七八个"),  # "seven or eight": not a number
        ("十字路口", "十字路口"),  # 十 inside a word, no measure word: untouched
        ("一样", "一样"),
    ],
)
def test_chinese_normalisation(answer, normalized):
    assert normalize_answer(answer) == normalized


@pytest.mark.parametrize(
    ("numeral", "value"),
    [("一", 1), ("两", 2), ("十", 10), ("十二", 12), ("二十", 20), ("九十九", 99), ("一百", 100), ("一百零五", 105),
     ("三百二十一", 321), ("零", 0), ("七八", None), ("百", None), ("", None)],
)  # fmt: skip
def test_chinese_numeral_values(numeral, value):
    assert chinese_numeral_value(numeral) == value


def test_exact_match_against_any_reference():
    assert exact_match("Two.", ["2", "three"])
    assert exact_match("两个", ["2个", "二"])
    assert not exact_match("three", ["2"])
    assert not exact_match("", ["yes"])


def test_scores_overall_per_type_and_per_language():
    predictions = ["yes", "2", "红色", "no", ""]
    references = [["yes"], ["two"], ["红色的"], ["yes"], ["蓝色"]]
    types = ["yes/no", "number", "color", "yes/no", None]
    langs = ["en", "en", "zh", "en", "zh"]
    scores, per_example = vqa_scores(predictions, references, types, langs)
    assert per_example == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert scores["exact_match"] == pytest.approx(0.4)
    assert scores["by_type"]["yes/no"] == {"exact_match": 0.5, "num_examples": 2}
    assert scores["by_type"]["(none)"]["num_examples"] == 1
    assert scores["by_lang"]["en"]["exact_match"] == pytest.approx(2 / 3)
    assert scores["by_lang"]["zh"] == {"exact_match": 0.0, "num_examples": 2}


def test_no_type_breakdown_without_types():
    scores, _ = vqa_scores(["yes"], [["yes"]], [None], ["en"])
    assert "by_type" not in scores and scores["exact_match"] == 1.0


def test_vqa_accuracy_is_the_official_leave_one_out_soft_score():
    ten = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("two", ten) == pytest.approx(0.9)  # 3 of 10 annotators: (3 × 2/3 + 7 × 1) / 10
    assert vqa_accuracy("3", ten) == 1.0
    assert vqa_accuracy("4", ten) == 0.0
    assert vqa_accuracy("2", ["2"] + ["3"] * 9) == pytest.approx(0.3)  # one annotator: 9 × 1/3 / 10
    assert vqa_accuracy("两个", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        vqa_accuracy("2", [])


def test_vqa_accuracy_leads_only_when_every_question_has_several_answers():
    ten = ["yes"] * 4 + ["no"] * 6
    scores, per_example = vqa_scores(["yes", "no"], [ten, ten], ["yes/no", "yes/no"], ["en", "en"])
    assert per_example == [1.0, 1.0] and scores["exact_match"] == 1.0 and scores["vqa_accuracy"] == 1.0
    scores, per_example = vqa_scores(["yes", "maybe"], [["yes"] + ["no"] * 9, ten], [None, None], ["en", "en"])
    assert per_example == [pytest.approx(0.3), 0.0]
    assert scores["by_lang"]["en"] == {"exact_match": 0.5, "vqa_accuracy": pytest.approx(0.15), "num_examples": 2}
    scores, per_example = vqa_scores(["yes", "yes"], [ten, ["yes"]], [None, None], ["en", "en"])
    assert "vqa_accuracy" not in scores and per_example == [1.0, 1.0]  # one single-answer question: EM only
