"""Hooks of the vlmforge_shapes lmms-eval task: draw each record's image, prompt, score.

The images are drawn from the record (shape and colour) so the task needs no image files and
nothing from the Hub; lmms-eval imports this module through the YAML's `!function utils.*`.
"""

from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (20, 60, 220)}


def doc_to_visual(doc):
    image = Image.new("RGB", (64, 64), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    box = (12, 12, 52, 52)
    if doc["shape"] == "circle":
        draw.ellipse(box, fill=COLORS[doc["color"]])
    else:
        draw.rectangle(box, fill=COLORS[doc["color"]])
    return [image]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return f"{doc['question']} Answer with one word."


def process_results(doc, results):
    answer = results[0].strip().lower().rstrip(".")
    return {"exact_match": float(answer == doc["answer"])}
