"""Safe image loading, shared by training, `data check`, chat and the server, plus image-root lookup.

    image = load_image("train2017/000000442786.jpg")          # PIL RGB image, fully decoded
    image = load_image(request_bytes, max_pixels=20_000_000)  # bytes from a client work too

Pixels are read as the file means them: the EXIF orientation is applied (a phone photo stored
sideways comes out upright) and 16-bit / 32-bit greyscale is scaled to 8 bits, not clipped (a
0..65535 gradient becomes 0..255, not black then white).

Every failure is an `ImageError` (a `DataError`) whose `kind` says what went wrong (missing,
undecodable, truncated, oversized) and whose message names the file, so one bad image can be
reported or skipped instead of crashing a run.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

from vlmforge.errors import DataError

# Pillow's own decompression-bomb threshold (about 89.5 megapixels); larger images are refused.
DEFAULT_MAX_PIXELS = 89_478_485


class ImageError(DataError):
    """An image that cannot be used; `kind` is missing | undecodable | truncated | oversized."""

    def __init__(self, kind: str, source: str, detail: str):
        super().__init__(f"{source}: {kind} image ({detail})")
        self.kind = kind
        self.source = source
        self.detail = detail


def load_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Open, size-check, fully decode and convert an image to RGB; raises `ImageError`."""
    if isinstance(source, (bytes, bytearray)):
        return to_rgb(upright(_decode(io.BytesIO(source), "<bytes>", max_pixels)))
    if not Path(source).is_file():
        raise ImageError("missing", str(source), "no such file")
    with open(source, "rb") as handle:
        return to_rgb(upright(_decode(handle, str(source), max_pixels)))


def upright(image):
    """The image turned as its EXIF Orientation tag says (in place); unreadable EXIF leaves it as stored."""
    from PIL import ImageOps

    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # a damaged EXIF block must not cost the picture itself
        pass
    return image


def _decode(handle, name: str, max_pixels: int):
    """Header first (size check before any pixel is decoded), then every pixel."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            image = Image.open(handle)
            _check_size(image, name, max_pixels)
            image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError("oversized", name, str(error)) from error
    except Image.UnidentifiedImageError as error:
        raise ImageError("undecodable", name, "not a recognised image format") from error
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...)
        kind = "truncated" if "truncated" in str(error).lower() else "undecodable"
        raise ImageError(kind, name, f"{type(error).__name__}: {error}") from error
    return image


def _check_size(image, name: str, max_pixels: int) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError("undecodable", name, f"empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError("oversized", name, f"{width}x{height} = {width * height} pixels > max {max_pixels}")


def to_rgb(image):
    """RGB copy of a PIL image; transparent pixels are composited onto white, not turned black."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8bit(image):
    """8-bit greyscale ("L") of a 16/32-bit integer or float image, scaled rather than clipped.

    16-bit data keeps its top byte (>> 8). Integer data wider than 16 bits and float data are
    scaled by their range: floats in [0, 1] by 255, anything else by its maximum.
    """
    import numpy as np
    from PIL import Image

    values = np.asarray(image)
    if image.mode.startswith("I;16") or (image.mode == "I" and 255 < values.max() <= 65535):
        scaled = values.astype(np.uint32) >> 8
    elif image.mode == "I" and values.max() <= 255:
        scaled = values
    else:
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
        top = 1.0 if values.max() <= 1.0 else values.max()
        scaled = np.rint(values * (255.0 / top))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))  # (H, W) uint8 -> "L"


def resolve_image_path(path: str, roots: Sequence[str | Path] = ()) -> Path:
    """Where an image path of a record lives on disk.

    An absolute path is returned as is. A relative one is joined to the first root under which
    the file exists; when none holds it, to the first root (so the error names a useful path),
    or left relative when no root is given.
    """
    candidate = Path(path)
    if candidate.is_absolute() or not roots:
        return candidate
    for root in roots:
        joined = Path(root) / candidate
        if joined.exists():
            return joined
    return Path(roots[0]) / candidate


def load_image_shrunk(source: str | Path | bytes, keep_side: int, max_pixels: int = DEFAULT_MAX_PIXELS):
    """`load_image`, but shrunk right after decoding, before any conversion copies it (the server).

    The shorter side becomes `keep_side` (aspect kept, never enlarged): a 5000x5000 RGBA upload costs
    one decoded copy for a moment instead of five, and nothing large waits in the queue."""
    if isinstance(source, (bytes, bytearray)):
        return to_rgb(shrink_to_side(upright(_decode(io.BytesIO(source), "<bytes>", max_pixels)), keep_side))
    if not Path(source).is_file():
        raise ImageError("missing", str(source), "no such file")
    with open(source, "rb") as handle:
        return to_rgb(shrink_to_side(upright(_decode(handle, str(source), max_pixels)), keep_side))


def shrink_to_side(image, keep_side: int):
    """A smaller copy when the image is larger than the processor can use; else the image itself.

    The shorter side becomes `keep_side` (aspect kept), and a long thin image is cut to 4 * keep_side**2
    pixels, its sides to 16 * keep_side (only beyond 64:1 does the aspect change), so no image held
    for the queue outgrows a square one by much. Box-reduce by a whole factor first (no full-size
    intermediate, unlike a premultiplied RGBA resize), then resize; palette, 1-bit and 16-bit images
    resize by nearest pixel (averaging palette indices would invent colours)."""
    from PIL import Image

    if keep_side <= 0:
        return image
    width, height = image.size
    scale = min(keep_side / min(width, height), (4 * keep_side**2 / (width * height)) ** 0.5)
    if scale >= 1 and max(width, height) <= 16 * keep_side:
        return image
    size = tuple(min(16 * keep_side, max(1, round(side * min(scale, 1.0)))) for side in (width, height))
    smooth = image.mode in ("L", "LA", "La", "RGB", "RGBA", "RGBa", "CMYK", "I", "F")
    factors = (max(1, width // max(size[0], keep_side)), max(1, height // max(size[1], keep_side)))
    if smooth and max(factors) >= 2:
        image = image.reduce(factors)
    return image.resize(size, Image.Resampling.BICUBIC if smooth else Image.Resampling.NEAREST)
