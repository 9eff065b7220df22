"""The demo's from-scratch parts: tokenizer, vision tower and LM train briefly and load back as HF folders."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.synth import write_synthetic_dataset
from vlmforge.demo.cell_words import add_cell_words, cell_word_composition
from vlmforge.demo.lm_pretraining import (
    cell_word_messages,
    lm_samples,
    pretrain_language_model,
    text_answer_accuracy,
)
from vlmforge.demo.parts import train_demo_tokenizer
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


def test_cell_word_messages_put_nine_cell_words_in_place_of_the_image(dataset):
    _, train, _, _ = dataset
    record = next(r for r in train if r["lang"] == "en" and len(r["messages"]) > 2)
    messages = cell_word_messages(record)
    assert IMAGE_PLACEHOLDER not in messages[0]["content"] and messages[0]["content"].count("<") == 9
    assert [m["content"] for m in messages[1:]] == [m["content"] for m in record["messages"][1:]]


def test_lm_samples_train_the_replies_and_point_each_answer_at_its_cell(dataset, tokenizer):
    _, train, _, _ = dataset
    tokenizer = train_demo_tokenizer(train, vocab_size=600)
    add_cell_words(tokenizer)
    records = [r for r in train if len(r["messages"]) > 2][:20]
    for record, sample in zip(records, lm_samples(records, tokenizer)):
        ids, labels = sample.encoded.input_ids, sample.encoded.labels
        trained = tokenizer.decode([token for token, label in zip(ids, labels) if label != -100])
        assert trained == "".join(m["content"] + "<|im_end|>" for m in record["messages"][1::2])
        asked = [cell for cell in record["meta"]["turn_cells"] if cell is not None]
        assert len(sample.lookups) == len(asked)
        first_cell = next(i for i, token in enumerate(ids) if tokenizer.convert_ids_to_tokens(token).startswith("<top_left:"))
        for (query, key), cell in zip(sample.lookups, asked):
            assert labels[query] == -100 and labels[query + 1] != -100  # the position that predicts the answer
            assert key == first_cell + cell


def test_language_model_trains_loads_and_generates(dataset, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vlmforge.demo.cell_words import composed_embedding_matrix

    _, train, captions, test = dataset
    tokenizer = train_demo_tokenizer(train + captions, vocab_size=600)
    add_cell_words(tokenizer)
    composition = cell_word_composition(tokenizer)
    folder = pretrain_language_model(lm_samples(train + captions, tokenizer), tokenizer, tmp_path / "llm", steps=30,
                                     hidden_size=64, batch_size=16, learning_rate=3e-3, composition=composition)
    metrics = read_metrics(folder)
    assert metrics["final_loss"] < 0.7 * metrics["first_loss"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    loaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    assert model.config._attn_implementation != "eager"  # the hint's eager attention is not saved
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == len(loaded_tokenizer)
    cell_ids, _ = composition
    with torch.no_grad():  # the composed cell-word rows are what was saved
        assert torch.allclose(weight[cell_ids], composed_embedding_matrix(weight, composition)[cell_ids], atol=1e-5)
    scores = text_answer_accuracy(model, loaded_tokenizer, test)
    assert set(scores) == {"overall", "colour", "shape", "position", "count", "by_position", "follow_up"}
    assert scores["colour"].keys() == {"en", "zh"}


def test_lookup_hint_teaches_the_last_layer_to_look_at_the_asked_cell(dataset, tmp_path):
    """With the hint, the hint head's attention on the asked-about cell rises far above a ninth; the
    loss it adds is what `lookup_weight` scales (0: plain next-token training)."""
    from transformers import AutoModelForCausalLM

    from vlmforge.demo.lm_pretraining import _losses

    _, train, _, _ = dataset
    tokenizer = train_demo_tokenizer(train, vocab_size=600)
    add_cell_words(tokenizer)
    samples = [sample for sample in lm_samples(train, tokenizer) if sample.lookups]
    folder = pretrain_language_model(samples, tokenizer, tmp_path / "llm", steps=60, hidden_size=64, num_heads=4,
                                     batch_size=16, learning_rate=3e-3, composition=cell_word_composition(tokenizer))
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    with torch.no_grad():
        _, lookup_loss = _losses(model, samples[:32], tokenizer.pad_token_id, None)
    assert float(torch.exp(-lookup_loss)) > 0.3  # geometric-mean weight on the asked cell; untrained ≈ 1/30


def test_loop_needs_a_limit_and_stops_at_max_steps():
    with pytest.raises(ConfigError):
        run_steps(lambda progress: 0.0, None, None, desc="x")
    progress_seen = []
    result = run_steps(lambda progress: progress_seen.append(progress) or 1.0, 4, None, desc="x")
    assert result.steps == 4 and progress_seen == [0.0, 0.25, 0.5, 0.75]


def test_vision_pretraining_rejects_records_without_scenes(dataset, tmp_path):
    out_dir, train, _, _ = dataset
    stripped = {key: value for key, value in train[0].items() if key != "meta"}
    with pytest.raises(DataError, match="meta.objects"):
        pretrain_vision_tower([stripped], out_dir, tmp_path / "vision", max_steps=1)
