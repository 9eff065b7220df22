"""`build_vlm` / `vlmforge build`: native transformers folder, identical logits, token counts, errors."""

import pytest
import torch
from PIL import Image

from vlmforge.cli import main
from vlmforge.model.build import BuildConfig, build_vlm, save_vlm

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]}]


def _image(color=(200, 30, 30), size=(40, 30)):
    return Image.new("RGB", size, color)


def _native(folder):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


@pytest.mark.parametrize(
    "vision, llm, tokens",
    [
        ("siglip", "qwen2", 16),  # SigLIP has no CLS token: all (32/8)^2 patches are kept
        ("siglip-dual", "qwen3", 16),
        ("clip", "llama", 16),  # CLIP's CLS token is dropped by default
        ("clip-dual", "qwen2", 16),
        ("dinov2", "qwen2", 16),  # another ViT backbone: its CLS token is dropped like CLIP's
    ],
)
def test_exported_folder_loads_natively_with_identical_logits(tiny_parts, tmp_path, vision, llm, tokens):
    model, processor = build_vlm(BuildConfig(vision=str(tiny_parts[vision]), llm=str(tiny_parts[llm])))
    save_vlm(model, processor, tmp_path / "vlm")
    assert not (tmp_path / "vlm" / "modeling_llava.py").exists()  # nothing custom travels with it
    native, native_processor = _native(tmp_path / "vlm")
    assert type(native).__name__ == "LlavaForConditionalGeneration"
    text = native_processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    inputs = native_processor(text=text, images=[_image()], return_tensors="pt")
    assert int((inputs["input_ids"] == native.config.image_token_index).sum()) == tokens
    assert native.config.image_seq_length == tokens
    with torch.no_grad():
        torch.testing.assert_close(native(**inputs).logits, model(**inputs).logits)


def test_clip_keep_cls_adds_one_token(tiny_parts):
    model, processor = build_vlm(BuildConfig(vision=str(tiny_parts["clip"]), llm=str(tiny_parts["qwen2"]), keep_cls=True))
    inputs = processor(text="<image>\nhi", images=[_image()], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == 17
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_vision_weights_are_the_pretrained_ones(tiny_parts):
    from transformers import SiglipModel

    dual = SiglipModel.from_pretrained(tiny_parts["siglip-dual"])
    model, _ = build_vlm(BuildConfig(vision=str(tiny_parts["siglip-dual"]), llm=str(tiny_parts["qwen2"])))
    ours = model.model.vision_tower.embeddings.patch_embedding.weight
    torch.testing.assert_close(ours, dual.vision_model.embeddings.patch_embedding.weight)


def test_projector_is_two_layer_gelu_mlp_or_linear(tiny_parts):
    mlp, _ = build_vlm(BuildConfig(vision=str(tiny_parts["siglip"]), llm=str(tiny_parts["qwen2"])))
    linear, _ = build_vlm(BuildConfig(vision=str(tiny_parts["siglip"]), llm=str(tiny_parts["qwen2"]), projector="linear"))
    assert mlp.config.projector_hidden_act == "gelu"
    assert type(mlp.model.multi_modal_projector.act).__name__ == "GELUActivation"
    x = torch.randn(3, 32)
    projector = linear.model.multi_modal_projector
    composed = projector.linear_2(projector.linear_1(x))
    torch.testing.assert_close(projector(x), composed)  # no non-linearity in between


def test_placeholder_image_mismatch_is_an_error_naming_counts(tiny_vlm_dir):
    native, processor = _native(tiny_vlm_dir)
    inputs = processor(text="<image> and <image>", images=[_image(), _image()], return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"][:1]  # 16 features x 32 dims = 512 values for 32 tokens
    with pytest.raises(ValueError, match="tokens: 32, features: 512"):
        native(**inputs)


def test_kv_cache_equals_no_cache(tiny_vlm_dir):
    native, processor = _native(tiny_vlm_dir)
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    inputs = processor(text=text, images=[_image()], return_tensors="pt")
    kwargs = dict(max_new_tokens=12, do_sample=False, min_new_tokens=12)
    with torch.no_grad():
        cached = native.generate(**inputs, use_cache=True, **kwargs)
        uncached = native.generate(**inputs, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_cli_build_writes_folder(tiny_parts, tmp_path, capsys):
    out = tmp_path / "cli-vlm"
    code = main(["build", "--vision", str(tiny_parts["clip"]), "--llm", str(tiny_parts["llama"]), "--out", str(out)])
    assert code == 0
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    assert "16 image tokens" in capsys.readouterr().out


def test_images_after_text_template_survives_save_and_native_load(tiny_parts, tmp_path):
    """`--images-after-text`: content parts [image, text] render as "text\n<image>" from the saved folder."""
    from transformers import AutoProcessor

    parts = [{"type": "image"}, {"type": "text", "text": "Q?"}, {"type": "image"}]
    rendered = {}
    for flag in (False, True):
        out = tmp_path / f"after-{flag}"
        args = ["build", "--vision", str(tiny_parts["siglip"]), "--llm", str(tiny_parts["qwen2"]), "--out", str(out)]
        assert main(args + (["--images-after-text"] if flag else [])) == 0
        processor = AutoProcessor.from_pretrained(out)
        prompt = processor.apply_chat_template([{"role": "user", "content": parts}], tokenize=False)
        record_style = processor.apply_chat_template([{"role": "user", "content": "Q?\n<image>"}], tokenize=False)
        rendered[flag] = (prompt, record_style)
    assert "<image>\nQ?\n<image>" in rendered[False][0]
    assert "Q?\n<image>\n<image>" in rendered[True][0]
    assert rendered[True][1] == rendered[False][1]  # string content (training records) is never reordered


@pytest.mark.parametrize(
    "vision_key, llm_key, message",
    [
        ("missing", "qwen2", "not found"),
        ("qwen2", "qwen2", "not a vision model"),
        ("siglip", "siglip", "not a causal language model"),
        ("empty", "qwen2", "no config.json"),
    ],
)
def test_bad_folders_give_one_clear_line_and_exit_2(tiny_parts, tmp_path, capsys, vision_key, llm_key, message):
    (tmp_path / "empty").mkdir()
    paths = dict(tiny_parts, missing=tmp_path / "nope", empty=tmp_path / "empty")
    code = main(["build", "--vision", str(paths[vision_key]), "--llm", str(paths[llm_key]), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
