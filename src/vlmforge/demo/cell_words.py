"""Cell words: one token per content of a grid cell, the text stand-in for the demo's 9 image tokens.

The demo's vision tower gives one image token per cell of the 3×3 grid. The language model is
pre-trained on text where the `<image>` placeholder is replaced by exactly 9 cell words in grid
order, no separators, so they sit where the 9 image tokens will sit:

    "What color is the square?\\n<empty><red_circle><empty><empty><blue_square><empty><empty><empty><empty>"

There are 19 cell words: `<red_circle>` … `<orange_triangle>` (6 colours × 3 shapes) and `<empty>`.
They are plain added tokens (not special: decoding keeps them). A cell word's embedding is tied
to the embeddings of the words that name it (`cell_word_composition`): `<red_square>` is the mean
of "red" / " red" / "红色" plus the mean of "square" / " square" / "正方形", so the answer words
are already in the cell's vector and the LM only has to learn *which* cell a question names.
"""

from __future__ import annotations

from vlmforge.data.synth import scene_of_record
from vlmforge.data.synth_scenes import COLOURS, GRID_SIZE, SHAPES, Scene
from vlmforge.errors import ModelError

EMPTY_CELL_WORD = "<empty>"
CELL_WORDS = tuple(f"<{colour.name}_{shape.name}>" for colour in COLOURS for shape in SHAPES) + (EMPTY_CELL_WORD,)


def cell_word(colour: str, shape: str) -> str:
    return f"<{colour}_{shape}>"


def scene_cell_words(scene: Scene) -> str:
    """The 9 cell words of a scene in grid order (row by row from the top left), no separators."""
    by_cell = {obj.cell: obj for obj in scene}
    words = [cell_word(by_cell[cell].colour, by_cell[cell].shape) if cell in by_cell else EMPTY_CELL_WORD
             for cell in range(GRID_SIZE * GRID_SIZE)]
    return "".join(words)


def record_cell_words(record: dict) -> str:
    """The cell words of a synthetic record's scene (from its `meta.objects`)."""
    return scene_cell_words(scene_of_record(record))


def add_cell_words(tokenizer) -> list[int]:
    """Add the 19 cell words to `tokenizer` as plain tokens (a no-op for those present); returns their ids."""
    tokenizer.add_tokens([word for word in CELL_WORDS if word not in tokenizer.get_vocab()])
    return [tokenizer.convert_tokens_to_ids(word) for word in CELL_WORDS]


def _naming_forms(name: str, chinese: str) -> list[str]:
    """How the data writes a word: at the start of an answer, inside a question, in Chinese."""
    return [name, f" {name}", chinese]


def cell_word_composition(tokenizer):
    """Which embeddings each object cell word is made of: (cell ids (K,), weights (K, V)), K = 18.

    Row k averages the token ids of the colour's forms and, separately, of the shape's forms, and
    adds the two averages: embedding(cell) = weights[k] @ embedding matrix. `<empty>` is not
    composed; it keeps its own trained embedding.
    """
    import torch

    vocab_size = len(tokenizer)
    cell_ids, rows = [], []
    for colour in COLOURS:
        for shape in SHAPES:
            row = torch.zeros(vocab_size)
            for forms in (_naming_forms(colour.name, colour.zh), _naming_forms(shape.name, shape.zh)):
                ids = sorted({i for form in forms for i in tokenizer(form, add_special_tokens=False)["input_ids"]})
                row[ids] += 1.0 / len(ids)
            cell_ids.append(_token_id(tokenizer, cell_word(colour.name, shape.name)))
            rows.append(row)
    return torch.tensor(cell_ids), torch.stack(rows)


def _token_id(tokenizer, word: str) -> int:
    if word not in tokenizer.get_vocab():
        raise ModelError(f"the tokenizer has no cell word {word}: call add_cell_words first")
    return tokenizer.convert_tokens_to_ids(word)


def composed_embedding_matrix(weight, composition):
    """The embedding matrix (V, D) with each object cell word's row replaced by its composition (differentiable)."""
    cell_ids, rows = composition
    return weight.index_put((cell_ids,), rows.to(weight.dtype) @ weight)  # (V, D)
