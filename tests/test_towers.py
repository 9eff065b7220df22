"""Every vision tower type the docs list builds a VLM that runs, or is refused with one clear line.

Token counts come from what the image processor and the tower actually produce: CLS (CLIP, ViT,
DINOv2) and registers (DINOv2 with registers) are measured, and a config whose `image_size`
disagrees with the processor (real DINOv2 checkpoints: 518 vs 224) still gets the processor's count.
"""

import pytest
import torch
from PIL import Image

from vlmforge.cli import main
from vlmforge.errors import ModelError
from vlmforge.model.build import BuildConfig, build_vlm, save_vlm
from vlmforge.model.tiny import make_tiny_vision

# kind, make_tiny_vision overrides, image tokens per image (32-pixel images, 8-pixel patches: 16 patches)
TOWERS = {
    "siglip": ("siglip", {}, 16),  # no CLS: every patch
    "clip": ("clip", {}, 16),  # CLS dropped
    "vit": ("vit", {}, 16),  # CLS dropped (ViTModel: not in any list, measured)
    "dinov2": ("dinov2", {}, 16),
    "dinov2-518-224": ("dinov2", {"image_size": 64, "processor_size": 32}, 16),  # config says 64, processor makes 32
    "dinov2-registers": ("dinov2-registers", {}, 20),  # CLS dropped, 4 registers stay
}


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return {name: make_tiny_vision(root / name, kind, **overrides) for name, (kind, overrides, _) in TOWERS.items()}


@pytest.mark.parametrize("name", list(TOWERS))
def test_tower_builds_a_folder_that_trains_and_loads_with_the_measured_token_count(towers, tiny_parts, tmp_path, name):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    expected = TOWERS[name][2]
    model, processor = build_vlm(BuildConfig(vision=str(towers[name]), llm=str(tiny_parts["qwen2"])))
    assert model.config.image_seq_length == expected
    save_vlm(model, processor, tmp_path / "vlm")
    native = AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm").eval()
    native_processor = AutoProcessor.from_pretrained(tmp_path / "vlm")
    images = [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (50, 70), (20, 90, 200))]
    inputs = native_processor(text=["<image>\nWhat?", "<image> and <image>"], images=images + images[:1],
                              padding=True, return_tensors="pt")
    assert int((inputs["input_ids"] == native.config.image_token_index).sum()) == 3 * expected
    labels = inputs["input_ids"].clone()
    with torch.no_grad():
        loss = native(**inputs, labels=labels).loss  # the training forward with two images in one row
        torch.testing.assert_close(native(**inputs).logits, model(**inputs).logits)
    assert torch.isfinite(loss)


def test_siglip2_naflex_tower_is_refused_in_one_line_naming_it(tiny_parts, tmp_path, capsys):
    vision = make_tiny_vision(tmp_path / "siglip2", "siglip2")
    capsys.readouterr()
    code = main(["build", "--vision", str(vision), "--llm", str(tiny_parts["qwen2"]), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "'siglip2_vision_model'" in err and "fixed-resolution" in err
    assert not (tmp_path / "o").exists()


def test_tower_that_cannot_run_on_its_processors_images_is_refused(tiny_parts, tmp_path):
    vision = make_tiny_vision(tmp_path / "vit", "vit", image_size=64, processor_size=32)  # ViT cannot interpolate
    with pytest.raises(ModelError, match="'vit' vision tower on the 32x32 images"):
        build_vlm(BuildConfig(vision=str(vision), llm=str(tiny_parts["qwen2"])))


def test_processor_without_a_fixed_image_size_is_refused(tiny_parts, tmp_path):
    import json

    vision = make_tiny_vision(tmp_path / "siglip", "siglip")
    config_file = vision / "preprocessor_config.json"
    config = json.loads(config_file.read_text())
    config["do_resize"] = False  # every image keeps its own size: no fixed token count
    config_file.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="'siglip_vision_model'.*one fixed image size"):
        build_vlm(BuildConfig(vision=str(vision), llm=str(tiny_parts["qwen2"])))


def test_build_refuses_a_model_whose_check_forward_fails(tiny_parts, monkeypatch):
    """The composed model runs once before build returns; a failure there is one line naming the tower."""
    from transformers import LlavaForConditionalGeneration

    def broken(self, *args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\nmore detail")

    monkeypatch.setattr(LlavaForConditionalGeneration, "forward", broken)
    with pytest.raises(ModelError, match=r"^a Llava model with the 'clip_vision_model' vision tower cannot run: "
                                         r"mat1 and mat2 shapes cannot be multiplied$"):
        build_vlm(BuildConfig(vision=str(tiny_parts["clip"]), llm=str(tiny_parts["qwen2"])))
