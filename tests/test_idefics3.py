"""`vlmforge build --arch idefics3`: tiles + global view + pixel-shuffle connector, native transformers folder.

Tiny SigLIP tower (32-pixel images, 8-pixel patches: 4x4 patches a tile) and tiny LMs from configs.
"""

import pytest
import torch
from PIL import Image

from vlmforge.cli import main
from vlmforge.errors import ModelError
from vlmforge.model.build import BuildConfig, build_vlm, save_vlm

WIDE, TALL, SMALL = (100, 40), (30, 90), (20, 12)  # SMALL is smaller than one 32-pixel tile


def _image(size, color=(200, 30, 30)):
    return Image.new("RGB", size, color)


def _conversation():
    """Two images in one user turn (wide and tall), text between them."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture?"},
                                         {"type": "image"}]}]


def _native(folder):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def built(tiny_parts, tmp_path_factory):
    """{scale: (in-memory model, processor, saved folder)} for pixel shuffle 1 and 2 (Qwen2 LM)."""
    result = {}
    for scale in (1, 2):
        model, processor = build_vlm(BuildConfig(vision=str(tiny_parts["siglip"]), llm=str(tiny_parts["qwen2"]),
                                                 arch="idefics3", pixel_shuffle=scale))
        folder = save_vlm(model, processor, tmp_path_factory.mktemp("idefics3") / f"vlm-{scale}")
        result[scale] = (model.eval(), processor, folder)
    return result


@pytest.mark.parametrize("scale, per_tile", [(1, 16), (2, 4)])
def test_native_reload_has_identical_logits_and_greedy_generation(built, scale, per_tile):
    model, _, folder = built[scale]
    native, processor = _native(folder)
    assert type(native).__name__ == "Idefics3ForConditionalGeneration"
    assert type(processor).__name__ == "Idefics3Processor"
    assert not list(folder.glob("*.py"))  # nothing custom travels with it
    text = processor.apply_chat_template(_conversation(), add_generation_prompt=True)
    inputs = processor(text=text, images=[_image(WIDE), _image(TALL, (10, 200, 40))], return_tensors="pt")
    # wide: 1 row x 2 tiles + global; tall: 2 rows x 1 tile + global (longest edge 64 = 2 tiles)
    assert inputs["pixel_values"].shape == (1, 6, 3, 32, 32)
    assert int((inputs["input_ids"] == native.config.image_token_id).sum()) == 6 * per_tile
    with torch.no_grad():
        torch.testing.assert_close(native(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
    kwargs = dict(max_new_tokens=6, do_sample=False)
    assert torch.equal(native.generate(**inputs, **kwargs), model.generate(**inputs, **kwargs))


def test_image_smaller_than_a_tile_is_resized_to_the_longest_edge_and_tiled(built):
    model, processor, _ = built[2]
    inputs = processor(text="<image>hi", images=[_image(SMALL)], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 5, 3, 32, 32)  # 20x12 → 64x38 → 64x64: 2 x 2 tiles + global
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_a_batch_with_a_text_only_sample_matches_single_samples(built):
    model, processor, _ = built[2]
    texts = ["<image>a photo", "<image>one<image>two"]
    images = [[_image(WIDE)], [_image(TALL), _image(SMALL)]]
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
        for row, (text, pictures) in enumerate(zip(texts, images)):
            alone = processor(text=text, images=pictures, return_tensors="pt")
            length = alone["input_ids"].shape[1]
            torch.testing.assert_close(logits[row, :length], model(**alone).logits[0], rtol=1e-4, atol=1e-4)


def test_llama_lm_and_untied_head(tiny_parts, tmp_path):
    model, processor = build_vlm(BuildConfig(vision=str(tiny_parts["siglip-dual"]), llm=str(tiny_parts["llama"]),
                                             arch="idefics3", pixel_shuffle=2, tile_size=32, longest_edge=96))
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    native, native_processor = _native(save_vlm(model, processor, tmp_path / "vlm"))
    inputs = native_processor(text="<image>hi", images=[_image(WIDE)], return_tensors="pt")
    assert inputs["pixel_values"].shape[1] == 2 * 3 + 1  # 100x40 → 96x38 → 96x64: 2 rows x 3 tiles + global
    with torch.no_grad():
        torch.testing.assert_close(native(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_vision_weights_are_the_siglip_ones(tiny_parts, built):
    from transformers import SiglipVisionModel

    siglip = SiglipVisionModel.from_pretrained(tiny_parts["siglip"])
    siglip = getattr(siglip, "vision_model", siglip)  # transformers 5 flattens the vision model
    model = built[2][0]
    torch.testing.assert_close(model.model.vision_model.encoder.layers[1].mlp.fc2.weight,
                               siglip.encoder.layers[1].mlp.fc2.weight)
    torch.testing.assert_close(model.model.vision_model.embeddings.position_embedding.weight,
                               siglip.embeddings.position_embedding.weight)


def test_other_tile_size_resizes_position_embeddings(tiny_parts):
    model, processor = build_vlm(BuildConfig(vision=str(tiny_parts["siglip"]), llm=str(tiny_parts["qwen2"]),
                                             arch="idefics3", pixel_shuffle=2, tile_size=48))
    assert model.model.vision_model.embeddings.position_embedding.weight.shape[0] == 36  # (48 / 8)^2
    assert processor.image_seq_len == 9


@pytest.mark.parametrize("overrides, match", [
    (dict(vision="clip"), "needs a SigLIP vision tower"),
    (dict(pixel_shuffle=3), "multiple of patch size x pixel shuffle"),  # 4 patches a side, not divisible by 3
    (dict(tile_size=36), "multiple of patch size"),
    (dict(pixel_shuffle=5), "--pixel-shuffle must be one of"),
    (dict(longest_edge=16), "smaller than one tile"),
    (dict(arch="qwen"), "unknown --arch"),
])
def test_bad_options_are_one_line_errors(tiny_parts, overrides, match):
    fields = dict(vision="siglip", llm="qwen2", arch="idefics3", pixel_shuffle=2)
    fields.update(overrides)
    fields["vision"], fields["llm"] = str(tiny_parts[fields["vision"]]), str(tiny_parts[fields["llm"]])
    with pytest.raises(ModelError, match=match):
        build_vlm(BuildConfig(**fields))


def test_cli_build_arch_idefics3(tiny_parts, tmp_path, capsys):
    out = tmp_path / "vlm"
    code = main(["build", "--vision", str(tiny_parts["siglip"]), "--llm", str(tiny_parts["qwen2"]), "--out", str(out),
                 "--arch", "idefics3", "--pixel-shuffle", "2", "--tile-size", "32"])
    assert code == 0
    assert "4 image tokens per tile" in capsys.readouterr().out
    native, _ = _native(out)
    assert native.config.scale_factor == 2 and native.config.vision_config.image_size == 32


def test_bench_plan_knows_the_image_tokens_of_both_families(built, tiny_vlm_dir, capsys):
    assert main(["bench", "--plan", "instruct-lora", "--gpu-gb", "24", "--model", str(built[2][2])]) == 0
    assert ("images: 4 image tokens per 32-pixel tile (idefics3, pixel shuffle 2); an image resized to a 64-pixel "
            "longest side is at most 2x2 tiles + a global view: up to 20 image tokens") in capsys.readouterr().out
    assert main(["bench", "--plan", "instruct-lora", "--gpu-gb", "24", "--model", str(tiny_vlm_dir)]) == 0
    assert "images: 16 image tokens per image (llava" in capsys.readouterr().out
