"""The demo's from-scratch parts: tokenizer, vision tower and LM train briefly and load back as HF folders."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.synth import write_synthetic_dataset
from vlmforge.demo.lm_pretraining import (
    conversation_messages,
    encode_with_assistant_mask,
    pretrain_language_model,
    text_answer_accuracy,
)
from vlmforge.demo.parts import conversation_texts, train_demo_tokenizer
from vlmforge.demo.training_loop import read_metrics, run_steps
from vlmforge.demo.vision_pretraining import load_scene_tensors, normalise, pretrain_vision_tower
from vlmforge.errors import ConfigError, DataError


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("shapes")
    summary = write_synthetic_dataset(out_dir, seed=1, num_train=160, num_val=8, num_test=16)
    return out_dir, read_jsonl(summary["train"]), read_jsonl(summary["captions"]), read_jsonl(summary["test"])


@pytest.fixture(scope="module")
def tokenizer(dataset):
    _, train, captions, _ = dataset
    return train_demo_tokenizer(train + captions, vocab_size=600)


def test_tokenizer_has_image_token_chat_template_and_chinese(tokenizer):
    image_ids = tokenizer(f"红色\n{IMAGE_PLACEHOLDER}", add_special_tokens=False)["input_ids"]
    assert image_ids[-1] == tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    assert tokenizer.decode(image_ids) == f"红色\n{IMAGE_PLACEHOLDER}"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n"
    # words of the data are merged: "三角形" is far fewer tokens than its 9 UTF-8 bytes
    assert len(tokenizer("三角形", add_special_tokens=False)["input_ids"]) <= 2


def test_vision_tower_loss_drops_and_folder_loads(dataset, tmp_path):
    from transformers import AutoImageProcessor, AutoModel, SiglipVisionModel

    out_dir, train, _, _ = dataset
    folder = pretrain_vision_tower(
        train, out_dir, tmp_path / "vision", max_steps=40, max_seconds=None, hidden_size=32, batch_size=32
    )
    metrics = read_metrics(folder)
    assert metrics["steps"] == 40 and metrics["final_loss"] < 0.7 * metrics["first_loss"]
    assert 0.0 <= metrics["probe"]["cell_accuracy"] <= 1.0 and metrics["probe_images"] == 32
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert isinstance(model, SiglipVisionModel) and not info["missing_keys"]
    assert model.config.patch_size == 16 and model.config.vision_use_head is False
    pixels, colour_labels, _ = load_scene_tensors(train[:4], out_dir)
    images = [Image.open(out_dir / record["images"][0]) for record in train[:4]]
    processed = AutoImageProcessor.from_pretrained(folder)(images, return_tensors="pt")["pixel_values"]
    assert torch.allclose(processed, normalise(pixels), atol=1e-5)  # training saw what the processor gives
    assert model(pixel_values=processed).last_hidden_state.shape == (4, 9, 32)  # one token per grid cell
    assert colour_labels.shape == (4, 9)
    assert (colour_labels > 0).sum() == sum(len(record["meta"]["objects"]) for record in train[:4])


def test_conversation_messages_put_the_caption_in_place_of_the_image(dataset):
    _, train, _, _ = dataset
    record = next(r for r in train if r["lang"] == "en")
    with_caption = conversation_messages(record, "caption")[0]["content"]
    assert IMAGE_PLACEHOLDER not in with_caption and "top left: " in with_caption
    assert conversation_messages(record, "drop")[0]["content"] == record["messages"][0]["content"].replace(
        "\n" + IMAGE_PLACEHOLDER, "")
    with pytest.raises(ConfigError):
        conversation_messages(record, "pixels")


def test_assistant_mask_covers_exactly_the_replies(tokenizer):
    messages = [{"role": "user", "content": "What color is the square?"}, {"role": "assistant", "content": "red"},
                {"role": "user", "content": "正方形在哪里？"}, {"role": "assistant", "content": "右下"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids, mask = encode_with_assistant_mask(text, tokenizer)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    replies = tokenizer.decode([token for token, is_reply in zip(ids, mask) if is_reply])
    assert replies == "red<|im_end|>右下<|im_end|>"


def test_language_model_trains_loads_and_generates(dataset, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, train, captions, test = dataset
    texts = conversation_texts(train + captions, tokenizer)
    folder = pretrain_language_model(
        texts, tokenizer, tmp_path / "llm", max_steps=30, max_seconds=None, hidden_size=64, batch_size=16
    )
    metrics = read_metrics(folder)
    assert metrics["final_loss"] < 0.7 * metrics["first_loss"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    loaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight.shape[0] == len(loaded_tokenizer)
    prompt = loaded_tokenizer.apply_chat_template(
        [{"role": "user", "content": "How many shapes are there?"}], tokenize=False, add_generation_prompt=True
    )
    input_ids = loaded_tokenizer(prompt, return_tensors="pt")["input_ids"]
    output = model.generate(input_ids, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > input_ids.shape[1]
    scores = text_answer_accuracy(model, loaded_tokenizer, test)
    assert set(scores) == {"overall", "colour", "shape", "position", "count"}
    assert scores["colour"].keys() == {"en", "zh"}
    assert np.isclose(scores["overall"], np.mean([v for t in ("colour", "shape", "position", "count")
                                                  for v in scores[t].values()]), atol=1e-3)


def test_loop_needs_a_limit_and_stops_at_max_steps():
    with pytest.raises(ConfigError):
        run_steps(lambda progress: 0.0, None, None, desc="x")
    progress_seen = []
    result = run_steps(lambda progress: progress_seen.append(progress) or 1.0, 4, None, desc="x")
    assert result.steps == 4 and progress_seen == [0.0, 0.25, 0.5, 0.75]


def test_make_demo_parts_gives_folders_that_vlmforge_build_joins(dataset, tmp_path):
    from vlmforge.demo.parts import make_demo_parts
    from vlmforge.model.build import BuildConfig, build_vlm

    out_dir, _, _, test = dataset
    parts = make_demo_parts(out_dir, tmp_path, vision_steps=2, lm_steps=2, vision_seconds=None, lm_seconds=None,
                            vocab_size=600)
    assert parts["metrics"]["vision"]["steps"] == 2 and parts["metrics"]["llm"]["steps"] == 2
    model, processor = build_vlm(BuildConfig(vision=parts["vision"], llm=parts["llm"]))
    assert model.config.image_seq_length == 9  # one image token per grid cell
    record = test[0]
    prompt = processor.apply_chat_template(record["messages"][:1], tokenize=False, add_generation_prompt=True)
    inputs = processor(images=[Image.open(out_dir / record["images"][0])], text=prompt, return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_index).sum() == 9
    with torch.no_grad():
        assert model(**inputs).logits.shape[:2] == inputs["input_ids"].shape


def test_vision_pretraining_rejects_records_without_scenes(dataset, tmp_path):
    out_dir, train, _, _ = dataset
    stripped = {key: value for key, value in train[0].items() if key != "meta"}
    with pytest.raises(DataError, match="meta.objects"):
        pretrain_vision_tower([stripped], out_dir, tmp_path / "vision", max_steps=1)
