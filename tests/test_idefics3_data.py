"""Idefics3 data path: per-image token ids from the image size (header), the collator's tiles, against the processor."""

import random

import pytest
import torch
from PIL import Image

from vlmforge.data.dataset import Sample
from vlmforge.data.image_tokens import TiledImageTokens, header_size, image_tokens_for
from vlmforge.data.tokenize import encode_conversation, render
from vlmforge.model.build import BuildConfig, build_vlm
from vlmforge.train.batching import Collator


@pytest.fixture(scope="module")
def vlm(tiny_parts):
    model, processor = build_vlm(BuildConfig(vision=str(tiny_parts["siglip"]), llm=str(tiny_parts["qwen2"]),
                                             arch="idefics3", pixel_shuffle=2, longest_edge=96))
    return model.eval(), processor


def _record(*turns):
    messages = []
    for user, answer in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def _image(size, seed=0):
    generator = random.Random(seed)
    return Image.new("RGB", size, tuple(generator.randrange(256) for _ in range(3)))


def test_llava_processor_keeps_a_constant(tiny_vlm_dir):
    from transformers import AutoProcessor

    assert image_tokens_for(AutoProcessor.from_pretrained(tiny_vlm_dir)) == 16


def test_grid_from_the_size_matches_the_image_processor_for_many_sizes(vlm):
    _, processor = vlm
    tokens = image_tokens_for(processor)
    assert isinstance(tokens, TiledImageTokens)
    generator = random.Random(0)
    sizes = [(1, 1), (32, 32), (33, 31), (96, 96), (97, 20), (20, 97), (400, 380), (4000, 10), (10, 3000)]
    sizes += [(generator.randrange(1, 700), generator.randrange(1, 700)) for _ in range(60)]
    for width, height in sizes:
        out = processor.image_processor([[Image.new("RGB", (width, height))]], return_row_col_info=True)
        assert tokens.grid(width, height) == (out["rows"][0][0], out["cols"][0][0]), (width, height)


@pytest.mark.parametrize("sizes", [[(100, 40)], [(30, 90), (20, 12)], [(200, 200), (64, 64), (7, 90)]])
def test_encoded_conversation_ids_equal_the_processors(vlm, sizes):
    _, processor = vlm
    tokens = image_tokens_for(processor)
    user = "\n".join(["<image>"] * len(sizes)) + "\nWhat is in this picture?"
    record = _record((user, "A red square."), ("And the colour?", "Red."))
    ids = [tokens.ids(*size) for size in sizes]
    encoded = encode_conversation(record["messages"], processor.tokenizer, "<image>", ids, None)
    expected = processor(text=render(record["messages"], processor.tokenizer),
                         images=[_image(size) for size in sizes])["input_ids"][0]
    assert encoded.input_ids == list(expected)
    assert encoded.num_images == len(sizes)


def test_count_of_file_reads_the_header_with_exif_rotation(vlm, tmp_path):
    _, processor = vlm
    tokens = image_tokens_for(processor)
    wide = tmp_path / "wide.jpg"
    _image((100, 40)).save(wide)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: seen as 40 x 100
    _image((100, 40)).save(rotated, exif=exif)
    assert header_size(wide) == (100, 40) and header_size(rotated) == (40, 100)
    assert tokens.count_of_file(wide) == tokens.count(100, 40) != tokens.count(40, 100) == tokens.count_of_file(rotated)
    assert tokens.count_of_file(tmp_path / "missing.png") == tokens.typical


def test_collator_batch_equals_the_processors_and_mixes_text_only(vlm):
    model, processor = vlm
    samples = [
        Sample(_record(("<image>\nWhat is it?", "A square.")), [_image((100, 40), 1)], "a.jsonl", 1),
        Sample(_record(("Hello there", "Hi.")), [], "a.jsonl", 2),  # text only
        Sample(_record(("<image>\n<image>\nCompare.", "Same.")), [_image((30, 90), 2), _image((20, 12), 3)], "a.jsonl", 3),
    ]
    batch = Collator(processor, 0, max_length=4096)(samples)
    # longest edge 96 = 3 tiles: 100x40 → 2 x 3 tiles + global; 30x90 → 3 x 1 + 1 and 20x12 → 2 x 3 + 1 (11 in all)
    assert batch["pixel_values"].shape == (2, 11, 3, 32, 32)
    assert batch["pixel_attention_mask"].shape == (2, 11, 32, 32)
    assert not batch["pixel_values"][0, 7:].any()  # the first row's padding tiles are zeros, as the processor pads
    for row, sample in enumerate(samples):
        text = render(sample.record["messages"], processor.tokenizer)
        alone = processor(text=text, images=sample.images or None, return_tensors="pt")
        length = alone["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][row, :length], alone["input_ids"][0])
    with torch.no_grad():  # the padded tiles are skipped: the forward matches one sample at a time
        logits = model(**{key: value for key, value in batch.items() if key != "labels"}).logits
        alone = processor(text=render(samples[2].record["messages"], processor.tokenizer), images=samples[2].images,
                          return_tensors="pt")
        length = alone["input_ids"].shape[1]
        torch.testing.assert_close(logits[2, :length], model(**alone).logits[0], rtol=1e-4, atol=1e-4)


def test_collator_drops_a_too_long_sample_and_its_tiles(vlm):
    _, processor = vlm
    samples = [
        Sample(_record(("<image>\n" + "word " * 300, "A.")), [_image((100, 40))], "a.jsonl", 1),
        Sample(_record(("<image>\nShort?", "B.")), [_image((30, 30))], "a.jsonl", 2),
    ]
    collator = Collator(processor, 0, max_length=200)
    batch = collator(samples)
    assert collator.dropped_too_long == 1
    assert batch["input_ids"].shape[0] == 1 and batch["pixel_values"].shape[0] == 1


def test_truncation_never_cuts_inside_an_image(vlm):
    _, processor = vlm
    tokens = image_tokens_for(processor)
    record = _record(("<image>\nQuestion", "word " * 50))
    ids = [tokens.ids(100, 40)]
    full = encode_conversation(record["messages"], processor.tokenizer, "<image>", ids, None)
    assert full.image_end == full.input_ids.index(tokens.ids(100, 40)[-1], full.image_end - 1) + 1
    keep = len(full.input_ids) - 10  # inside the answer
    cut = encode_conversation(record["messages"], processor.tokenizer, "<image>", ids, keep, "truncate")
    assert cut is not None and cut.input_ids == full.input_ids[:keep]
    assert encode_conversation(record["messages"], processor.tokenizer, "<image>", ids, full.image_end - 1,
                               "truncate") is None


def test_dataset_token_lengths_read_image_headers_and_match_the_collator(vlm, tmp_path):
    import json

    from vlmforge.data.dataset import ConversationDataset
    from vlmforge.data.token_lengths import check_lengths_fit, dataset_token_lengths

    _, processor = vlm
    sizes = {"wide.png": (300, 40), "small.png": (20, 12), "tall.jpg": (30, 90)}
    for name, size in sizes.items():
        _image(size).save(tmp_path / name)
    records = [{"messages": [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A."}],
                "images": [name]} for name in sizes]
    records.append({"messages": [{"role": "user", "content": "Text only"}, {"role": "assistant", "content": "Yes."}]})
    records.append({"messages": [{"role": "user", "content": "<image><image>\nBoth?"}, {"role": "assistant", "content": "No."}],
                    "images": ["wide.png", "tall.jpg"]})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    dataset = ConversationDataset([path])
    tokens = image_tokens_for(processor)
    lengths = dataset_token_lengths(dataset, processor.tokenizer, "<image>", tokens)
    collator = Collator(processor, 0, max_length=100_000)
    exact = [int(collator([dataset[index]])["attention_mask"].sum()) for index in range(len(dataset))]
    assert all(abs(int(estimate) - length) <= 2 for estimate, length in zip(lengths, exact)), (list(lengths), exact)
    assert len(set(exact[:3])) == 3  # three image sizes, three lengths
    fit = check_lengths_fit(dataset, processor.tokenizer, "<image>", tokens, max_length=100_000, lengths=lengths)
    assert fit.left_out == 0 and fit.longest == max(exact)


def test_data_check_measures_each_image_by_its_size(vlm, tmp_path):
    import json

    from vlmforge.data.check import CheckOptions, check_files, format_check_report
    from vlmforge.data.dataset import ConversationDataset
    from vlmforge.model.build import save_vlm

    model, processor = vlm
    folder = save_vlm(model, processor, tmp_path / "vlm")
    for name, size in {"wide.png": (300, 40), "small.png": (20, 12)}.items():
        _image(size).save(tmp_path / name)
    records = [{"messages": [{"role": "user", "content": "<image>\nWhat?"}, {"role": "assistant", "content": "A."}],
                "images": [name]} for name in ("wide.png", "small.png")]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    collator = Collator(processor, 0, max_length=100_000)
    dataset = ConversationDataset([path])
    exact = sorted(int(collator([dataset[index]])["attention_mask"].sum()) for index in range(2))
    report = check_files([path], CheckOptions(model_dir=folder, max_length=exact[1] - 1))
    assert (report.lengths["min"], report.lengths["max"]) == tuple(exact)
    assert report.over_max_length == 1
    assert "tokens per record (by size per image)" in format_check_report(report)
