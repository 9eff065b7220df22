"""Safe image loading: every failure is an ImageError naming the file and its kind; root lookup."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmforge.data.images import ImageError, load_image, resolve_image_path
from vlmforge.errors import DataError

IMAGES = Path(__file__).parent / "fixtures" / "data" / "images"


def test_good_image_is_decoded_to_rgb():
    image = load_image(IMAGES / "coco/train2017/000000000139.jpg")
    assert image.mode == "RGB" and image.size == (64, 48)
    red, green, blue = image.getpixel((10, 10))
    assert red > 150 and green < 100 and blue < 100


def test_bytes_and_a_png_saved_as_jpg_load():
    data = (IMAGES / "ocr_vqa/images/043902348X.jpg").read_bytes()
    assert data.startswith(b"\x89PNG")
    assert load_image(data).size == (30, 40)
    assert load_image(IMAGES / "ocr_vqa/images/043902348X.jpg").mode == "RGB"


def test_transparent_pixels_become_white_not_black():
    assert load_image(IMAGES / "transparent.png").getpixel((0, 0)) == (255, 255, 255)


def test_grayscale_is_converted_to_rgb():
    buffer = io.BytesIO()
    Image.new("L", (5, 5), 128).save(buffer, "PNG")
    assert load_image(buffer.getvalue()).getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize(
    "name, kind",
    [
        ("coco/train2017/000000000999.jpg", "missing"),
        ("coco/train2017/000000000724.jpg", "undecodable"),
        ("gqa/images/2354787.jpg", "truncated"),
        ("vg/VG_100K/bomb.png", "oversized"),
    ],
)
def test_bad_images_raise_a_data_error_with_kind_and_path(name, kind):
    with pytest.raises(ImageError) as caught:
        load_image(IMAGES / name)
    assert caught.value.kind == kind
    assert isinstance(caught.value, DataError)
    assert str(IMAGES / name) in str(caught.value)


def test_max_pixels_is_configurable():
    path = IMAGES / "coco/train2017/000000000139.jpg"  # 64 x 48 = 3072 pixels
    with pytest.raises(ImageError, match="3072 pixels > max 3000") as caught:
        load_image(path, max_pixels=3000)
    assert caught.value.kind == "oversized"
    assert load_image(path, max_pixels=3072).size == (64, 48)


def test_resolve_image_path_tries_each_root(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    (second / "sub").mkdir(parents=True)
    (second / "sub" / "x.jpg").write_bytes(b"")
    assert resolve_image_path("sub/x.jpg", [first, second]) == second / "sub" / "x.jpg"
    assert resolve_image_path("sub/missing.jpg", [first, second]) == first / "sub" / "missing.jpg"
    assert resolve_image_path("sub/x.jpg") == Path("sub/x.jpg")
    assert resolve_image_path(str(tmp_path / "abs.jpg"), [first]) == tmp_path / "abs.jpg"


def test_16_bit_grey_gradient_is_scaled_not_clipped():
    """Golden: gradient16.png holds 0..65535 (column c = c * 257); it must read as 0..255, column c = c."""
    image = load_image(IMAGES / "gradient16.png")
    assert Image.open(IMAGES / "gradient16.png").mode.startswith("I;16")
    assert image.mode == "RGB" and image.size == (256, 4)
    assert [image.getpixel((column, 2)) for column in (0, 1, 100, 254, 255)] == [
        (0, 0, 0), (1, 1, 1), (100, 100, 100), (254, 254, 254), (255, 255, 255)]


def test_exif_orientation_is_applied():
    """Golden: exif_orientation6.jpg is stored 40x20 (red left, blue right) with Orientation=6."""
    assert Image.open(IMAGES / "exif_orientation6.jpg").size == (40, 20)
    image = load_image((IMAGES / "exif_orientation6.jpg").read_bytes())  # bytes (the server's path) too
    assert image.size == (20, 40)
    top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
    assert top[0] > 180 and top[2] < 60 and bottom[2] > 180 and bottom[0] < 60


def test_32_bit_and_float_images_are_scaled():
    wide = Image.fromarray(np.array([[0, 1 << 20, 1 << 24]], dtype="int32"))  # 32-bit "I": scaled by its maximum
    assert [load_image(_tiff_bytes(wide)).getpixel((x, 0))[0] for x in range(3)] == [0, 16, 255]


def _tiff_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    return buffer.getvalue()
