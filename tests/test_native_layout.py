"""Folders vlmforge writes use the published Llava checkpoint layout and prompt like vlmforge everywhere.

The layout of the Llava checkpoints on the Hub (`language_model.model.*`, `language_model.lm_head.*`,
`multi_modal_projector.*`, `vision_tower.vision_model.*`) is what vLLM and older transformers read;
transformers 5 converts it on load. The processor, chat template and generation config travel with
the folder, so transformers' `pipeline("image-text-to-text")` builds the same prompt ids as
vlmforge's training and serving paths.
"""

import logging

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from vlmforge.model.build import BuildConfig, build_vlm, save_vlm

PUBLISHED_PREFIXES = ("language_model.model.", "language_model.lm_head.", "multi_modal_projector.", "vision_tower.")


def _keys(folder) -> list[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        return sorted(weights.keys())


def _load_quietly_checked(folder):
    """Load natively; fail on any missing / unexpected / mismatched key or a load warning about weights."""
    from transformers import AutoModelForImageTextToText
    from transformers.utils import logging as hf_logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logging.get_logger().addHandler(handler)
    try:
        model, info = AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True)
    finally:
        hf_logging.get_logger().removeHandler(handler)
    assert not any(info.values()), info
    weight_warnings = [record.getMessage() for record in records if record.levelno >= logging.WARNING
                       and any(word in record.getMessage().lower() for word in ("load report", "weight", "key"))]
    assert not weight_warnings, weight_warnings
    return model.eval()


@pytest.mark.parametrize(
    "vision, llm, tower_prefix",
    [
        ("siglip", "qwen2", "vision_tower.vision_model."),  # tied embeddings: no lm_head key
        ("clip", "llama", "vision_tower.vision_model."),
        ("clip-dual", "qwen3", "vision_tower.vision_model."),
        ("dinov2", "llama", "vision_tower.encoder.layer."),  # Dinov2Model has no wrapper; 4.x names
    ],
)
def test_saved_keys_follow_the_published_layout_and_load_natively_with_equal_logits(tiny_parts, tmp_path, vision,
                                                                                     llm, tower_prefix):
    model, processor = build_vlm(BuildConfig(vision=str(tiny_parts[vision]), llm=str(tiny_parts[llm])))
    folder = save_vlm(model, processor, tmp_path / "vlm")
    keys = _keys(folder)
    assert all(key.startswith(PUBLISHED_PREFIXES) for key in keys), [k for k in keys if not k.startswith(PUBLISHED_PREFIXES)]
    assert any(key.startswith(tower_prefix) for key in keys)
    assert not any(key.startswith(("model.", "lm_head.")) for key in keys)  # transformers 5's own layout
    assert ("language_model.lm_head.weight" in keys) == (not model.config.tie_word_embeddings)
    if tower_prefix == "vision_tower.encoder.layer.":
        assert any(".attention.attention.query." in key for key in keys)
    native = _load_quietly_checked(folder)
    inputs = processor(text="<image>\nWhat is it?", images=[Image.new("RGB", (40, 30), (9, 200, 40))], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(native(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_resaving_a_loaded_folder_keeps_the_layout_and_the_weights(tiny_vlm_dir, tmp_path):
    """train / export load a folder and save it again: the layout survives the round trip."""
    from vlmforge.model.load import load

    model, processor = load(tiny_vlm_dir)
    again = save_vlm(model, processor, tmp_path / "again")
    assert _keys(again) == _keys(tiny_vlm_dir)
    with safe_open(str(again / "model.safetensors"), "pt") as new, safe_open(str(tiny_vlm_dir / "model.safetensors"), "pt") as old:
        for key in _keys(again):
            assert torch.equal(new.get_tensor(key), old.get_tensor(key)), key


def test_folder_in_transformers_5_layout_is_rewritten_in_the_published_one(tiny_parts, tiny_vlm_dir, tmp_path):
    """Folders written before (plain `save_pretrained`, `vision_tower.embeddings.*`) come out published."""
    from vlmforge.model.load import load

    model, processor = build_vlm(BuildConfig(vision=str(tiny_parts["siglip"]), llm=str(tiny_parts["qwen2"])))
    model.save_pretrained(tmp_path / "plain")
    processor.save_pretrained(tmp_path / "plain")
    assert any(key.startswith("vision_tower.embeddings.") for key in _keys(tmp_path / "plain"))
    old_model, old_processor = load(tmp_path / "plain")
    assert _keys(save_vlm(old_model, old_processor, tmp_path / "published")) == _keys(tiny_vlm_dir)


def test_export_writes_the_published_layout(tiny_vlm_dir, tmp_path):
    from vlmforge.model.load import load
    from vlmforge.train.export import export_model

    model, processor = load(tiny_vlm_dir)
    assert _keys(export_model(model, processor, tmp_path / "exported")) == _keys(tiny_vlm_dir)


def test_processor_chat_template_and_generation_config_travel_with_the_folder(tiny_vlm_dir):
    """The published processor files: what transformers 4.x (and tools built on it) look for, 5.x reads too."""
    import json

    from transformers import AutoProcessor

    names = {path.name for path in tiny_vlm_dir.iterdir()}
    assert {"config.json", "generation_config.json", "processor_config.json", "preprocessor_config.json",
            "chat_template.json", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json"} <= names
    generation = json.loads((tiny_vlm_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] and "pad_token_id" in generation
    processor_config = json.loads((tiny_vlm_dir / "processor_config.json").read_text())
    assert "image_processor" not in processor_config  # 4.x: "got multiple values for argument 'image_processor'"
    assert processor_config["patch_size"] == 8 and processor_config["num_additional_image_tokens"] == 0
    assert json.loads((tiny_vlm_dir / "preprocessor_config.json").read_text())["size"] == {"height": 32, "width": 32}
    template = json.loads((tiny_vlm_dir / "chat_template.json").read_text())["chat_template"]
    assert template == (tiny_vlm_dir / "chat_template.jinja").read_text()
    tokenizer_config = json.loads((tiny_vlm_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] != "TokenizersBackend"
    assert "<image>" in tokenizer_config["additional_special_tokens"] and "extra_special_tokens" not in tokenizer_config
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    assert processor.chat_template == template and processor.image_processor.size.height == 32
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert processor.tokenizer.decode([image_id, image_id], skip_special_tokens=True) == ""  # still special


def test_pipeline_apply_chat_template_and_vlmforge_build_the_same_prompt_ids(lively_vlm_dir):
    """One conversation (system, two user turns, an image in each): every path gives the same ids."""
    from transformers import AutoProcessor, pipeline

    from vlmforge.data.tokenize import encode_prompt, image_tokens_per_image
    from vlmforge.infer.generate import prepare_inputs

    images = [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (30, 50), (10, 10, 220))]
    parts = [
        {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
        {"role": "user", "content": [{"type": "image", "image": images[0]}, {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
        {"role": "user", "content": [{"type": "image", "image": images[1]}, {"type": "text", "text": "And here?"}]},
    ]
    records = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "<image>\nColour?"},
               {"role": "assistant", "content": "Red."}, {"role": "user", "content": "<image>\nAnd here?"}]
    pipe = pipeline("image-text-to-text", model=str(lively_vlm_dir))
    seen = {}
    generate = pipe.model.generate

    def spy(*args, **kwargs):
        seen["input_ids"] = kwargs["input_ids"]
        return generate(*args, **kwargs)

    pipe.model.generate = spy
    pipe(text=parts, max_new_tokens=1)
    from_pipeline = seen["input_ids"][0].tolist()

    processor = AutoProcessor.from_pretrained(lively_vlm_dir)
    from_template = processor.apply_chat_template(parts, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"][0]
    from_training = encode_prompt(records, processor.tokenizer, processor.image_token, image_tokens_per_image(processor))
    no_pixels = [[{**part, "image": None} if part["type"] == "image" else part for part in message["content"]]
                 for message in parts]
    serving = [{"role": message["role"], "content": content} for message, content in zip(parts, no_pixels)]
    from_serving = prepare_inputs(processor, [serving], [images])["input_ids"][0].tolist()
    assert from_pipeline.count(processor.tokenizer.convert_tokens_to_ids(processor.image_token)) == 2 * 16
    assert list(from_template) == from_pipeline
    assert from_training == from_pipeline
    assert from_serving == from_pipeline
