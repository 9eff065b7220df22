"""Training dataset: byte-offset index, lazy images, mixing weights, bad-sample budget, length grouping."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vlmforge.data.dataset import BadSampleBudget, ConversationDataset, LengthGroupedSampler, LineIndex
from vlmforge.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def conversation(index, image=None):
    question = f"<image>\nQuestion {index}?" if image else f"Question {index}?"
    return {"id": f"r{index}", "source": "t", "images": [image] if image else [],
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "Answer " + "x" * index}]}


def write_jsonl(path, records, blank_after=()):
    lines = []
    for index, record in enumerate(records):
        lines.append(json.dumps(record, ensure_ascii=False))
        if index in blank_after:
            lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def data_dir(tmp_path):
    shutil.copytree(FIXTURES / "images", tmp_path / "images")
    return tmp_path


def test_line_index_offsets_read_back_each_record(tmp_path):
    records = [conversation(i) for i in range(5)]
    records[2]["messages"][1]["content"] = "中文答案"
    path = write_jsonl(tmp_path / "a.jsonl", records, blank_after={1})
    index = LineIndex.build(path)
    assert len(index) == 5 and index.offsets.dtype == np.int64
    assert list(index.line_numbers) == [1, 2, 4, 5, 6]
    assert [json.loads(index.read(row)) for row in range(5)] == records


def test_getitem_returns_record_and_decoded_images(data_dir):
    path = write_jsonl(data_dir / "d.jsonl", [conversation(0, "images/coco/train2017/000000000139.jpg"), conversation(1)])
    dataset = ConversationDataset([path])
    sample = dataset[0]
    assert sample.record["id"] == "r0" and (sample.path, sample.line) == (str(path), 1)
    assert [image.size for image in sample.images] == [(64, 48)] and sample.images[0].mode == "RGB"
    assert dataset[1].images == []
    rooted = ConversationDataset([write_jsonl(data_dir / "sub.jsonl", [conversation(0, "coco/train2017/000000000139.jpg")])],
                                 image_roots=[data_dir / "nowhere", data_dir / "images"])
    assert rooted[0].images[0].size == (64, 48)


def test_bad_samples_are_skipped_counted_once_and_bounded(data_dir):
    bad_images = ["images/coco/train2017/000000000724.jpg", "images/gqa/images/2354787.jpg", "images/missing.jpg"]
    records = [conversation(i) for i in range(97)] + [conversation(97 + i, image) for i, image in enumerate(bad_images)]
    path = write_jsonl(data_dir / "d.jsonl", records)
    path.write_text(path.read_text() + "{not json\n")
    dataset = ConversationDataset([path], budget=BadSampleBudget(max_count=3))
    assert len(dataset) == 101
    assert [dataset[i] for i in (97, 98, 99)] == [None, None, None]
    assert dataset[97] is None and len(dataset.budget.bad) == 3  # seen again (next epoch): not counted twice
    with pytest.raises(DataError, match=r"too many bad samples: 4 of 101 \(limit 3\).*000000000724"):
        dataset[100]


def test_budget_as_a_fraction_of_the_dataset():
    budget = BadSampleBudget(max_fraction=0.02)
    assert budget.limit(1000) == 20
    assert BadSampleBudget(max_fraction=0.5, max_count=3).limit(1000) == 3  # an explicit count wins
    for key in range(20):
        budget.record_bad(key, f"sample {key}", 1000)
    with pytest.raises(DataError, match="21 of 1000"):
        budget.record_bad(20, "sample 20", 1000)


def test_mixing_weights_repeat_and_subsample_deterministically(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [conversation(i) for i in range(10)])
    second = write_jsonl(tmp_path / "b.jsonl", [conversation(100 + i) for i in range(10)])
    dataset = ConversationDataset([first, second], weights=[2.0, 0.5], seed=3)
    assert len(dataset) == 25
    ids = [dataset[i].record["id"] for i in range(len(dataset))]
    assert sorted(ids[:20]) == sorted([f"r{i}" for i in range(10)] * 2)
    assert len(set(ids[20:])) == 5 and all(int(i[1:]) >= 100 for i in ids[20:])
    again = ConversationDataset([first, second], weights=[2.0, 0.5], seed=3)
    assert [again[i].record["id"] for i in range(len(again))] == ids
    with pytest.raises(ConfigError, match="1 mixing weight"):
        ConversationDataset([first, second], weights=[1.0])


def test_length_estimates_count_text_and_image_tokens(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [conversation(0, "a.jpg"), conversation(0)])
    estimates = ConversationDataset([path]).length_estimates(num_image_tokens=100)
    assert estimates[0] - estimates[1] >= 100 - 3  # one image (and a slightly longer line)
    assert estimates[0] - estimates[1] <= 100 + 10


def test_length_grouped_sampler_is_deterministic_complete_and_grouped():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1000, size=203)
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=1, group_batches=5)
    order = list(sampler)
    assert sorted(order) == list(range(203)) and len(sampler) == 203
    assert list(LengthGroupedSampler(lengths, batch_size=8, seed=1, group_batches=5)) == order
    sampler.set_epoch(1)
    assert list(sampler) != order
    sampler.set_epoch(0)
    batches = sampler.batches()
    assert [len(b) for b in batches[:-1]] == [8] * 25 and len(batches[-1]) == 3  # the short batch last
    assert lengths[batches[0]].max() == lengths.max()  # longest first: out-of-memory shows at step 1
    spread = np.mean([np.ptp(lengths[b]) for b in batches[:-1]])
    random_spread = np.mean([np.ptp(lengths[rng.permutation(203)[:8]]) for _ in range(50)])
    assert spread < random_spread / 3


def test_works_with_a_torch_dataloader_and_pickles_for_workers(tmp_path):
    import pickle

    from torch.utils.data import DataLoader

    path = write_jsonl(tmp_path / "a.jsonl", [conversation(i) for i in range(20)])
    dataset = ConversationDataset([path])
    assert len(pickle.loads(pickle.dumps(dataset))) == 20
    sampler = LengthGroupedSampler(dataset.length_estimates(num_image_tokens=10), batch_size=4)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=list)
    batches = [[sample.record["id"] for sample in batch] for batch in loader]
    assert len(batches) == 5 and sorted(sum(batches, [])) == sorted(f"r{i}" for i in range(20))
