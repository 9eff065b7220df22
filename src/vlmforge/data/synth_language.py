"""Words, questions, answers and captions about shape scenes, in English and Chinese.

Answers are short and canonical ("red", "bottom right", "two"; 红色, 右下, 两个) so exact match
scores them. Every question names its object by an attribute that is unique in the scene (shape,
colour or cell), so it has exactly one right answer, and the text alone says nothing about it.
A question's type is what it asks (colour, shape, position, count), except that questions naming
their object by its cell ("What color is the shape at the bottom right?") are `by_position`: they
need the spatial reading of a named cell, a skill of its own.
Captions name every cell of the grid in a fixed order, row by row:
"top left: a red circle; top middle: nothing; …" / "左上：红色圆形；上中：无；…".
"""

from __future__ import annotations

import random

from vlmforge.data.synth_scenes import COLOUR_BY_NAME, GRID_SIZE, SHAPE_BY_NAME, Scene, SceneObject

LANGUAGES = ("en", "zh")
QUESTION_TYPES = ("colour", "shape", "position", "count", "by_position")
FOLLOW_UP = "follow_up"  # held-out records whose scored question is a second turn about the same image
REFERENTS = ("shape", "colour", "position")  # what a question may name its object by

POSITION_NAMES = {
    "en": (
        ("top left", "top middle", "top right"),
        ("middle left", "center", "middle right"),
        ("bottom left", "bottom middle", "bottom right"),
    ),
    "zh": (("左上", "上中", "右上"), ("左中", "中间", "右中"), ("左下", "下中", "右下")),
}
COUNT_WORDS = {"en": ("one", "two", "three"), "zh": ("一个", "两个", "三个")}

# (what is asked, object referent) → template per language; None referent: about the whole scene.
QUESTION_TEMPLATES = {
    ("colour", "shape"): {"en": "What color is the {shape}?", "zh": "{shape}是什么颜色？"},
    ("colour", "position"): {"en": "What color is the shape at the {position}?", "zh": "{position}的形状是什么颜色？"},
    ("shape", "colour"): {"en": "What shape is the {colour} object?", "zh": "{colour}的物体是什么形状？"},
    ("shape", "position"): {"en": "What shape is at the {position}?", "zh": "{position}是什么形状？"},
    ("position", "shape"): {"en": "Where is the {shape}?", "zh": "{shape}在哪里？"},
    ("position", "colour"): {"en": "Where is the {colour} object?", "zh": "{colour}的物体在哪里？"},
    ("count", None): {"en": "How many shapes are there?", "zh": "图中有几个形状？"},
}
CAPTION_PROMPTS = {"en": "Describe every cell of the grid.", "zh": "描述网格中的每一格。"}
EMPTY_CELL_WORDS = {"en": "nothing", "zh": "无"}  # what a caption says of an empty cell
_CAPTION_JOINERS = {"en": (": ", "; "), "zh": ("：", "；")}


def colour_word(colour: str, lang: str) -> str:
    return colour if lang == "en" else COLOUR_BY_NAME[colour].zh


def shape_word(shape: str, lang: str) -> str:
    return shape if lang == "en" else SHAPE_BY_NAME[shape].zh


def position_word(row: int, col: int, lang: str) -> str:
    return POSITION_NAMES[lang][row][col]


def answer_for(asked: str, scene: Scene, obj: SceneObject | None, lang: str) -> str:
    """The canonical short answer when `asked` (colour, shape, position, count) of `obj` (or the whole scene)."""
    if asked == "colour":
        return colour_word(obj.colour, lang)
    if asked == "shape":
        return shape_word(obj.shape, lang)
    if asked == "position":
        return position_word(obj.row, obj.col, lang)
    if asked == "count":
        return COUNT_WORDS[lang][len(scene) - 1]
    raise ValueError(f"unknown attribute {asked!r}")


def question_type(asked: str, referent: str | None) -> str:
    """The type of a question that asks `asked` about the object named by `referent`."""
    return "by_position" if referent == "position" else asked


def templates_for(qtype: str, referents: tuple[str, ...] = REFERENTS) -> list[tuple[str, str | None]]:
    """The (asked, referent) templates of question type `qtype` that `referents` permits."""
    return [(asked, referent) for asked, referent in QUESTION_TEMPLATES
            if question_type(asked, referent) == qtype and referent in (None, *referents)]


def askable_types(referents: tuple[str, ...] = REFERENTS) -> tuple[str, ...]:
    """The question types `referents` leave a way to ask (`by_position` needs the "position" referent)."""
    return tuple(qtype for qtype in QUESTION_TYPES if templates_for(qtype, referents))


def ask(qtype: str, scene: Scene, lang: str, rng: random.Random,
        referents: tuple[str, ...] = REFERENTS) -> tuple[str, str, int | None]:
    """A random (question, answer, cell) of type `qtype` about `scene` in `lang`, its object named by
    one of `referents`; `cell` is the grid cell (0-8) of the object asked about (None: count questions)."""
    asked, referent = rng.choice(templates_for(qtype, referents))
    template = QUESTION_TEMPLATES[(asked, referent)][lang]
    obj = rng.choice(scene) if referent else None
    question = template.format(**_referent_words(obj, lang)) if obj else template
    return question, answer_for(asked, scene, obj, lang), (obj.cell if obj else None)


def _referent_words(obj: SceneObject, lang: str) -> dict[str, str]:
    return {
        "shape": shape_word(obj.shape, lang),
        "colour": colour_word(obj.colour, lang),
        "position": position_word(obj.row, obj.col, lang),
    }


def describe_scene(scene: Scene, lang: str) -> str:
    """Caption naming every cell in a fixed order: "top left: a red circle; top middle: nothing; …"."""
    by_cell = {obj.cell: obj for obj in scene}
    label_sep, cell_sep = _CAPTION_JOINERS[lang]
    parts = []
    for cell in range(GRID_SIZE * GRID_SIZE):
        row, col = divmod(cell, GRID_SIZE)
        content = _object_phrase(by_cell[cell], lang) if cell in by_cell else EMPTY_CELL_WORDS[lang]
        parts.append(position_word(row, col, lang) + label_sep + content)
    return cell_sep.join(parts)


def _object_phrase(obj: SceneObject, lang: str) -> str:
    if lang == "en":
        article = "an" if obj.colour[0] in "aeiou" else "a"
        return f"{article} {obj.colour} {obj.shape}"
    return colour_word(obj.colour, lang) + shape_word(obj.shape, lang)
