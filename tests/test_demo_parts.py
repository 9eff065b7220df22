"""The demo's from-scratch parts: tokenizer, vision tower and LM train briefly and load back as HF folders."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.synth import write_synthetic_dataset
from vlmforge.data.synth_language import POSITION_NAMES
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


PLACE_SLUG = {name: en.replace(" ", "_") for lang in ("en", "zh") for row, en_row in zip(POSITION_NAMES[lang], POSITION_NAMES["en"])
              for name, en in zip(row, en_row)}
PLACE_NAMES = set(PLACE_SLUG)


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


def test_role_names_and_place_names_are_one_token_each(dataset):
    from vlmforge.data.synth_language import POSITION_NAMES

    _, train, captions, _ = dataset
    tokenizer = train_demo_tokenizer(train + captions, vocab_size=600)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}],
                                             tokenize=True, return_dict=True)["input_ids"]
    assert {"user", "assistant"} <= set(tokenizer.convert_ids_to_tokens(rendered))  # one token each, not 3 and 7
    add_cell_words(tokenizer)
    for lang in ("en", "zh"):
        for name in (name for row in POSITION_NAMES[lang] for name in row):
            assert len(tokenizer(name, add_special_tokens=False)["input_ids"]) == 1
    question = tokenizer("What color is the shape at the bottom right?", add_special_tokens=False)["input_ids"]
    assert " bottom right" in tokenizer.convert_ids_to_tokens(question)
    assert tokenizer.decode(question) == "What color is the shape at the bottom right?"  # decoding gives the text back


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
    cell_ids, weights = cell_word_composition(tokenizer)
    row_of = {int(cell): row for cell, row in zip(cell_ids, weights)}

    def names(cell_id: int, word_id: int) -> bool:
        return bool(row_of[cell_id][word_id] > 0)

    for record, sample in zip(records, lm_samples(records, tokenizer)):
        ids, labels = sample.encoded.input_ids, sample.encoded.labels
        trained = tokenizer.decode([token for token, label in zip(ids, labels) if label != -100])
        assert trained == "".join(m["content"] + "<|im_end|>" for m in record["messages"][1::2])
        first_cell = next(i for i, token in enumerate(ids) if tokenizer.convert_ids_to_tokens(token).startswith("<top_left:"))
        # every answer word (not the end-of-turn token) of a turn that asks about a cell points at that cell,
        # or, asked after the image, at the question's last word naming it, which points at the cell (relay)
        relayed = dict(sample.relays)
        answer_words = [i for i in range(1, len(ids)) if labels[i] != -100 and ids[i] != tokenizer.eos_token_id]
        turn_of = {i: sum(labels[j] == tokenizer.eos_token_id for j in range(i)) for i in answer_words}
        expected = [(i - 1, first_cell + record["meta"]["turn_cells"][turn_of[i]]) for i in answer_words
                    if record["meta"]["turn_cells"][turn_of[i]] is not None]
        assert [query for query, _ in sample.lookups] == [query for query, _ in expected] and expected
        for (query, key), (_, cell) in zip(sample.lookups, expected):
            if key != cell:
                turn_start = max(j for j in range(query) if labels[j] != -100)  # the previous answer's end
                assert first_cell + 9 <= turn_start < key < query and relayed[key] == cell
        assert all(names(ids[cell], ids[word]) for word, cell in sample.relays)  # "red" for <top_left:red_circle>
    assert any(sample.relays for sample in lm_samples(records, tokenizer))


def test_caption_words_look_at_the_cell_whose_place_was_named_last(dataset):
    _, train, captions, _ = dataset
    tokenizer = train_demo_tokenizer(train + captions, vocab_size=600)
    add_cell_words(tokenizer)
    records = [r for r in captions if len(r["meta"]["objects"]) > 1][:6]
    for record, sample in zip(records, lm_samples(records, tokenizer)):
        tokens = tokenizer.convert_ids_to_tokens(sample.encoded.input_ids)
        looked_at = {tokens[key] for _, key in sample.lookups}
        assert len(looked_at) == 9  # every cell is described, so every cell is looked at
        for query, key in sample.lookups:
            place = max(i for i in range(query + 1) if tokens[i].strip() in PLACE_NAMES)  # the last place named
            assert tokens[key].startswith("<" + PLACE_SLUG[tokens[place].strip()] + ":")


def test_question_words_are_the_words_of_the_question_just_asked_that_name_the_asked_cell(dataset):
    _, train, _, _ = dataset
    tokenizer = train_demo_tokenizer(train, vocab_size=600)
    add_cell_words(tokenizer)
    records = [r for r in train if r["lang"] == "en" and len(r["messages"]) > 2
               and r["meta"]["turn_types"][1] in ("colour", "shape", "position")][:10]
    assert records
    for record, sample in zip(records, lm_samples(records, tokenizer)):
        tokens = tokenizer.convert_ids_to_tokens(sample.encoded.input_ids)
        asked = {obj["row"] * 3 + obj["col"]: obj for obj in record["meta"]["objects"]}[record["meta"]["turn_cells"][1]]
        first_answer = next(i for i, label in enumerate(sample.encoded.labels) if label != -100)
        query, words = next((q, w) for q, w in sample.question_words if q > first_answer)  # the second turn's
        named = [tokens[i].lstrip("Ġ") for i in words]
        assert named and set(named) <= {asked["colour"], asked["shape"]}
        second_question = tokenizer.apply_chat_template(record["messages"][:3], tokenize=False).rsplit("<|im_start|>", 1)[1]
        assert all(word in second_question for word in named)  # from the question just asked, not the first one
        assert words[-1] < query


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

    _, train, _, _ = dataset
    tokenizer = train_demo_tokenizer(train, vocab_size=600)
    add_cell_words(tokenizer)
    samples = [sample for sample in lm_samples(train, tokenizer) if sample.lookups]
    folder = pretrain_language_model(samples, tokenizer, tmp_path / "llm", steps=60, hidden_size=64, num_heads=4,
                                     batch_size=16, learning_rate=3e-3, lookup_heads=3,
                                     composition=cell_word_composition(tokenizer))
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    log_weights = []  # (lookups, heads): log attention weight of each last-layer head on each lookup's key
    with torch.no_grad():
        for sample in samples[:32]:
            last = model(torch.tensor([sample.encoded.input_ids]), output_attentions=True).attentions[-1][0]
            log_weights += [torch.log(last[:, query, key] + 1e-6) for query, key in sample.lookups]
    geometric_mean = torch.stack(log_weights).mean(0).exp()  # per head
    assert (geometric_mean[:3] > 0.3).all()  # on the asked cell (or relay word); untrained ≈ 1/30
    assert geometric_mean[3] < geometric_mean[:3].min()  # the 4th head was not trained to look there


def test_copy_start_writes_what_the_head_reads():
    """An attention layer started as a copy: a head that attends only to token k outputs token k's
    (normalised) vector, so a looked-up cell word's answer words are readable from the first step."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from vlmforge.demo.lm_pretraining import start_as_copy

    config = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=8)
    attention = Qwen2ForCausalLM(config).model.layers[0].self_attn
    start_as_copy(attention)
    values = torch.randn(5, 16)
    assert torch.allclose(attention.o_proj(attention.v_proj(values)), values, atol=1e-6)
    grouped = Qwen2Config(**{**config.to_dict(), "num_key_value_heads": 1})
    with pytest.raises(ConfigError):
        start_as_copy(Qwen2ForCausalLM(grouped).model.layers[0].self_attn)


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
