"""How many tokens (and which) an image becomes in the text, asked of the processor.

    tokens = image_tokens_for(processor)   # an int for Llava (every image alike), a TiledImageTokens for Idefics3
    tokens.ids(width, height)               # Idefics3: the exact ids the processor writes for an image of that size
    tokens.count_of_file(path)              # from the image header, without decoding pixels

Llava turns every image into the same `image_seq_length` tokens. Idefics3 resizes an image so its
longest side is `size.longest_edge`, cuts it into `rows x cols` tiles of `max_image_size` pixels and
adds a global view, and writes for it the text

    <fake_token_around_image><row_1_col_1><image>*n ... <row_r_col_c><image>*n \\n ... \\n
    \\n<fake_token_around_image><global-img><image>*n<fake_token_around_image>

(`n` = the processor's `image_seq_len`). The grid depends only on the image's width and height,
so it is computed here from the header with the image processor's own arithmetic; the text is the
processor's own `replace_image_token`, tokenised once per grid. Because it starts and ends with
special tokens, tokenising it alone gives the same ids as tokenising the whole prompt.
"""

from __future__ import annotations

import math
from pathlib import Path

MAX_IMAGE_SIZE = 4096  # transformers' Idefics3 image processor caps the longest side here


def image_tokens_for(processor):
    """An int (every image alike) or a `TiledImageTokens` (the count depends on the image's size)."""
    if is_tiling(processor):
        return TiledImageTokens(processor)
    from vlmforge.data.tokenize import image_tokens_per_image

    return image_tokens_per_image(processor)


def is_tiling(processor) -> bool:
    """Whether the processor writes a per-size tile layout for each image (Idefics3 / SmolVLM family)."""
    return hasattr(processor, "replace_image_token") and hasattr(processor.image_processor, "max_image_size")


def typical_count(num_image_tokens) -> int:
    """One number for cheap estimates: the count itself, or a square image's at the longest edge."""
    return num_image_tokens if isinstance(num_image_tokens, int) else num_image_tokens.typical


class TiledImageTokens:
    """Per-size image token ids of a tiling (Idefics3) processor, cached per grid."""

    def __init__(self, processor):
        image_processor = processor.image_processor
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.splitting = bool(getattr(image_processor, "do_image_splitting", True))
        self.longest_edge = int(_edge(image_processor.size))
        self.tile = int(_edge(image_processor.max_image_size))
        self._by_grid: dict[tuple[int, int], list[int]] = {}
        self.typical = len(self.ids(self.longest_edge, self.longest_edge))

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """(rows, cols) of tiles for an image of this size; (0, 0) when it is one tile (no global view)."""
        if not self.splitting:
            return 0, 0
        height, width = _longest_edge_size(height, width, self.longest_edge)
        height, width = _tile_multiple_size(height, width, self.tile)
        if height > self.tile or width > self.tile:
            return math.ceil(height / self.tile), math.ceil(width / self.tile)
        return 0, 0

    def ids_for_grid(self, rows: int, cols: int) -> list[int]:
        """Token ids the processor writes for one image cut into `rows x cols` tiles."""
        key = (int(rows), int(cols))
        if key not in self._by_grid:
            text = self.processor.replace_image_token({"rows": [[key[0]]], "cols": [[key[1]]]}, 0)
            self._by_grid[key] = self.tokenizer.encode(text, add_special_tokens=False)
        return self._by_grid[key]

    def ids(self, width: int, height: int) -> list[int]:
        return self.ids_for_grid(*self.grid(width, height))

    def count(self, width: int, height: int) -> int:
        return len(self.ids(width, height))

    def count_of_file(self, path: str | Path) -> int:
        """Tokens of the image file at `path`, from its header; `typical` when it cannot be read."""
        size = header_size(path)
        return self.typical if size is None else self.count(*size)


def _edge(size) -> int:
    size = size if isinstance(size, dict) else vars(size)
    return size.get("longest_edge") or max(size.get("height") or 0, size.get("width") or 0)


def _longest_edge_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """The image processor's first resize: longest side to `longest_edge` (even short side), capped at 4096."""
    aspect = width / height
    if width >= height:
        width, height = longest_edge, int(longest_edge / aspect)
        height += height % 2
    else:
        height, width = longest_edge, int(longest_edge * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


def _tile_multiple_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """The image processor's second resize (`resize_for_vision_encoder`): both sides to multiples of a tile."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


def header_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of an image file as `load_image` will see it (EXIF rotation applied), from its header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
