"""Cell words: one token per grid cell and its content, the text stand-in for the demo's 9 image tokens.

The demo's vision tower gives one image token per cell of the 3×3 grid. The language model is
pre-trained on text where the `<image>` placeholder is replaced by exactly 9 cell words in grid
order, no separators, so they sit where the 9 image tokens will sit:

    "What color is the square?\\n<top_left:empty><top_middle:red_circle>…<bottom_right:empty>"

There are 9 × 19 cell words: each cell's position with one of 6 colours × 3 shapes, or `empty`.
They are plain added tokens (not special: decoding keeps them). A cell word's embedding is tied
to the embeddings of the words that name it (`cell_word_composition`): `<bottom_right:red_square>`
is the mean of "red" / " red" / "红色" plus the mean of "square" / " square" / "正方形" plus the mean
of "bottom right" / " bottom right" / "右下" (an empty cell: of "nothing" / "无"). The answer words
are then already inside the cell's vector (input and output embeddings are tied), and the LM only
has to learn *which* cell a question names, by content or by place, as a ViT's patch tokens carry
both what they show and where they are.
"""

from __future__ import annotations

from vlmforge.data.synth import scene_of_record
from vlmforge.data.synth_language import EMPTY_CELL_WORDS as EMPTY_WORDS
from vlmforge.data.synth_language import POSITION_NAMES
from vlmforge.data.synth_scenes import COLOUR_BY_NAME, COLOURS, GRID_SIZE, SHAPE_BY_NAME, SHAPES, Scene
from vlmforge.errors import ModelError

EMPTY = "empty"
POSITION_SLUGS = tuple(name.replace(" ", "_") for row in POSITION_NAMES["en"] for name in row)  # grid order
CONTENTS = tuple(f"{colour.name}_{shape.name}" for colour in COLOURS for shape in SHAPES) + (EMPTY,)
CELL_WORDS = tuple(f"<{slug}:{content}>" for slug in POSITION_SLUGS for content in CONTENTS)


def cell_word(cell: int, content: str = EMPTY) -> str:
    """The word of grid cell `cell` (0-8, row by row) holding `content` ("red_circle", …, or "empty")."""
    return f"<{POSITION_SLUGS[cell]}:{content}>"


def scene_cell_words(scene: Scene) -> str:
    """The 9 cell words of a scene in grid order (row by row from the top left), no separators."""
    by_cell = {obj.cell: obj for obj in scene}
    return "".join(cell_word(cell, f"{by_cell[cell].colour}_{by_cell[cell].shape}" if cell in by_cell else EMPTY)
                   for cell in range(GRID_SIZE * GRID_SIZE))


def record_cell_words(record: dict) -> str:
    """The cell words of a synthetic record's scene (from its `meta.objects`)."""
    return scene_cell_words(scene_of_record(record))


def place_words() -> list[str]:
    """Every way the data writes a cell's place: "top left", " top left", "左上", ... (27 words)."""
    return [form for row in range(GRID_SIZE) for col in range(GRID_SIZE)
            for form in _naming_forms(POSITION_NAMES["en"][row][col], POSITION_NAMES["zh"][row][col])]


def add_cell_words(tokenizer) -> list[int]:
    """Add the 171 cell words, and each place name as one word, to `tokenizer` as plain tokens (a no-op for
    those present); returns the cell words' ids.

    A place name is one token so that naming a place is as plain as naming a colour: split by BPE,
    "bottom right" and "bottom middle" share "bottom", and a cell's place is then half the same
    vector as its neighbours' (measured: places answered at ~30 % where colours reached 100 %)."""
    tokenizer.add_tokens([word for word in (*CELL_WORDS, *place_words()) if word not in tokenizer.get_vocab()])
    return [tokenizer.convert_tokens_to_ids(word) for word in CELL_WORDS]


def _naming_forms(name: str, chinese: str) -> list[str]:
    """How the data writes a word: at the start of an answer, inside a question, in Chinese."""
    return [name, f" {name}", chinese]


def _content_forms(content: str) -> list[list[str]]:
    if content == EMPTY:
        return [_naming_forms(EMPTY_WORDS["en"], EMPTY_WORDS["zh"])]
    colour, shape = content.split("_")
    return [_naming_forms(colour, COLOUR_BY_NAME[colour].zh), _naming_forms(shape, SHAPE_BY_NAME[shape].zh)]


def cell_word_composition(tokenizer):
    """Which embeddings each cell word is made of: (cell ids (K,), weights (K, V)), K = 171.

    Row k averages the token ids of each naming word's forms (the position's, the colour's and the
    shape's, or "nothing"'s) and adds the averages: embedding(cell word) = weights[k] @ embedding matrix.
    """
    import torch

    cell_ids, rows = [], []
    for cell, slug in enumerate(POSITION_SLUGS):
        row_index, col_index = divmod(cell, GRID_SIZE)
        place = _naming_forms(POSITION_NAMES["en"][row_index][col_index], POSITION_NAMES["zh"][row_index][col_index])
        for content in CONTENTS:
            cell_ids.append(_token_id(tokenizer, cell_word(cell, content)))
            rows.append(_composed_row(tokenizer, [place, *_content_forms(content)]))
    return torch.tensor(cell_ids), torch.stack(rows)


def content_composition(tokenizer, content: str):
    """Weights (V,) of a word standing for a cell's content alone ("red_circle", or "empty"), made as a cell
    word's but without the place: the mean of the colour's word forms plus the mean of the shape's."""
    return _composed_row(tokenizer, _content_forms(content))


def _composed_row(tokenizer, form_groups: list[list[str]]):
    """(V,) weights: for each group of forms of one word, the mean over the token ids of its forms, added up."""
    import torch

    row = torch.zeros(len(tokenizer))
    for forms in form_groups:
        ids = sorted({i for form in forms for i in tokenizer(form, add_special_tokens=False)["input_ids"]})
        row[ids] += 1.0 / len(ids)
    return row


def _token_id(tokenizer, word: str) -> int:
    if word not in tokenizer.get_vocab():
        raise ModelError(f"the tokenizer has no cell word {word}: call add_cell_words first")
    return tokenizer.convert_tokens_to_ids(word)


def composed_embedding_matrix(weight, composition):
    """The embedding matrix (V, D) with each object cell word's row replaced by its composition (differentiable)."""
    cell_ids, rows = composition
    return weight.index_put((cell_ids,), rows.to(weight.dtype) @ weight)  # (V, D)
