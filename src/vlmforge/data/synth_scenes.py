"""Shape scenes for the synthetic demo data: what a scene is, how to sample one, how to draw it.

A scene is a 3×3 grid holding 1–3 objects. Within a scene every object has its own shape, its own
colour and its own cell, so "the square" or "the red object" always names exactly one object.
Drawing is plain PIL without anti-aliasing: every object pixel has its palette colour exactly.

The default 48 px image has 16 px cells, so a ViT with 16 px patches sees one cell per patch.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

GRID_SIZE = 3
MAX_OBJECTS = 3
BACKGROUND_RGB = (245, 245, 245)
MIN_IMAGE_SIZE = 12  # 4 px cells: the smallest size where shapes are still told apart


@dataclass(frozen=True)
class Colour:
    name: str
    zh: str
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Shape:
    name: str
    zh: str


COLOURS = (
    Colour("red", "红色", (220, 40, 40)),
    Colour("green", "绿色", (40, 160, 60)),
    Colour("blue", "蓝色", (40, 80, 220)),
    Colour("yellow", "黄色", (235, 200, 30)),
    Colour("purple", "紫色", (140, 60, 180)),
    Colour("orange", "橙色", (245, 130, 20)),
)
SHAPES = (Shape("circle", "圆形"), Shape("square", "正方形"), Shape("triangle", "三角形"))
COLOUR_BY_NAME = {colour.name: colour for colour in COLOURS}
SHAPE_BY_NAME = {shape.name: shape for shape in SHAPES}


@dataclass(frozen=True, order=True)
class SceneObject:
    row: int
    col: int
    shape: str
    colour: str

    @property
    def cell(self) -> int:
        """Index 0–8 of the object's cell, row by row from the top left."""
        return self.row * GRID_SIZE + self.col

    def to_meta(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "row": self.row, "col": self.col}


Scene = tuple[SceneObject, ...]  # sorted by cell


def sample_scene(rng: random.Random, num_objects: int) -> Scene:
    """A scene of `num_objects` objects with distinct shapes, colours and cells."""
    shapes = rng.sample([shape.name for shape in SHAPES], num_objects)
    colours = rng.sample([colour.name for colour in COLOURS], num_objects)
    cells = rng.sample(range(GRID_SIZE * GRID_SIZE), num_objects)
    objects = (SceneObject(cell // GRID_SIZE, cell % GRID_SIZE, s, c) for s, c, cell in zip(shapes, colours, cells))
    return tuple(sorted(objects))


def scene_from_meta(meta_objects: list[dict]) -> Scene:
    """Rebuild a scene from a record's `meta.objects`."""
    return tuple(sorted(SceneObject(o["row"], o["col"], o["shape"], o["colour"]) for o in meta_objects))


def scene_key(scene: Scene) -> str:
    """A canonical string naming the scene's content (the same scene always gives the same key)."""
    return "|".join(f"{o.row}{o.col}:{o.shape}:{o.colour}" for o in scene)


def scene_bucket(scene: Scene, buckets: int = 100) -> int:
    """A stable hash of the scene into `buckets` buckets (the same in every process and Python version)."""
    digest = hashlib.sha256(scene_key(scene).encode()).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def cell_box(row: int, col: int, image_size: int) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom), right/bottom exclusive, of a grid cell."""
    left, right = col * image_size // GRID_SIZE, (col + 1) * image_size // GRID_SIZE
    top, bottom = row * image_size // GRID_SIZE, (row + 1) * image_size // GRID_SIZE
    return left, top, right, bottom


def render_scene(scene: Scene, image_size: int, rng: random.Random) -> Image.Image:
    """Draw the scene; each object gets a random size (60–85 % of its cell) and offset inside its cell."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    for obj in scene:
        _draw_object(draw, obj, cell_box(obj.row, obj.col, image_size), rng)
    return image


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, box: tuple[int, int, int, int], rng: random.Random):
    left, top, right, bottom = box
    cell_side = min(right - left, bottom - top)
    side = max(3, round(cell_side * rng.uniform(0.6, 0.85)))
    slack = max(0, cell_side - side - 2)  # keep a 1 px margin so shapes never touch a neighbour cell
    x, y = left + 1 + rng.randint(0, slack), top + 1 + rng.randint(0, slack)
    fill = COLOUR_BY_NAME[obj.colour].rgb
    corners = [x, y, x + side - 1, y + side - 1]
    if obj.shape == "circle":
        draw.ellipse(corners, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(corners, fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x + (side - 1) / 2, y), (x, y + side - 1), (x + side - 1, y + side - 1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")
