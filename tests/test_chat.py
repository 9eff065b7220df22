"""Generation and `vlmforge chat`: batching, streaming, history, batch files, errors."""

import json

import pytest
import torch
from PIL import Image

from vlmforge.cli import main
from vlmforge.errors import DataError
from vlmforge.infer.chat import ChatSession, answer_records
from vlmforge.infer.generate import GenerationOptions, generate, stream
from vlmforge.model.load import load


@pytest.fixture(scope="module")
def tiny(lively_vlm_dir):
    return load(lively_vlm_dir)


def _ask(text, n_images=1):
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]


RED, BLUE = Image.new("RGB", (32, 32), (220, 20, 20)), Image.new("RGB", (48, 40), (20, 20, 220))
GREEDY = GenerationOptions(max_new_tokens=8)


def test_batched_left_padded_generation_equals_one_by_one(tiny):
    model, processor = tiny
    conversations = [_ask("What is it?"), _ask("Describe this picture in many more words, please.", 2), _ask("hi", 0)]
    images = [[RED], [RED, BLUE], []]
    batched = generate(model, processor, conversations, images, GREEDY)
    alone = [generate(model, processor, [c], [i], GREEDY)[0] for c, i in zip(conversations, images)]
    assert [c.text for c in batched] == [c.text for c in alone]
    assert [c.prompt_tokens for c in batched] == [c.prompt_tokens for c in alone]
    assert alone[1].prompt_tokens > alone[0].prompt_tokens + 16  # a second image adds its 16 tokens


def test_kv_cache_equals_no_cache_through_generate(tiny):
    model, processor = tiny
    with_cache = generate(model, processor, [_ask("What is it?")], [[RED]], GenerationOptions(max_new_tokens=10))
    without = generate(model, processor, [_ask("What is it?")], [[RED]], GenerationOptions(max_new_tokens=10, use_cache=False))
    assert with_cache[0].text == without[0].text


def test_stream_concatenates_to_the_batch_answer(tiny):
    model, processor = tiny
    pieces = list(stream(model, processor, _ask("What is it?"), [RED], GREEDY))
    assert "".join(pieces) == generate(model, processor, [_ask("What is it?")], [[RED]], GREEDY)[0].text


def test_sampling_is_reproducible_with_a_seed(tiny):
    model, processor = tiny
    options = GenerationOptions(max_new_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    first = generate(model, processor, [_ask("x")], [[RED]], options)[0].text
    assert first == generate(model, processor, [_ask("x")], [[RED]], options)[0].text


def test_placeholder_count_mismatch_names_both_counts(tiny):
    model, processor = tiny
    with pytest.raises(DataError, match="2 image placeholder.*1 image"):
        generate(model, processor, [_ask("two?", 2)], [[RED]], GREEDY)


def test_session_keeps_history_and_images(tiny):
    model, processor = tiny
    session = ChatSession(model, processor, GREEDY, system="Be brief.")
    session.attach(RED)
    first = "".join(session.ask("What colour?"))
    session.attach(BLUE)
    "".join(session.ask("And now?"))
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert session.messages[2]["content"] == first and len(session.images) == 2
    session.reset()
    assert session.messages == [{"role": "system", "content": "Be brief."}] and session.images == []


def test_answer_records_drops_the_reference_turn(tiny, tmp_path):
    model, processor = tiny
    RED.save(tmp_path / "red.png")
    record = {"id": 3, "images": ["red.png"], "messages": [
        {"role": "user", "content": "<image>\nWhat colour?"}, {"role": "assistant", "content": "red"}]}
    (answer,) = answer_records(model, processor, [record], GREEDY, image_roots=[tmp_path])
    expected = generate(model, processor, [_ask("What colour?")], [[RED]], GREEDY)[0].text
    assert answer["id"] == 3 and answer["prediction"] == expected


def test_cli_one_shot_and_batch(lively_vlm_dir, tmp_path, capsys):
    RED.save(tmp_path / "red.png")
    assert main(["chat", str(lively_vlm_dir), "--image", str(tmp_path / "red.png"), "--prompt", "What is it?",
                 "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out.strip()
    model, processor = load(lively_vlm_dir)
    assert printed == generate(model, processor, [_ask("What is it?")], [[RED]], GenerationOptions(max_new_tokens=6))[0].text.strip()

    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps({"id": f"r{i}", "images": ["red.png"] * (i % 2), "messages": [
        {"role": "user", "content": "<image>\nHi" if i % 2 else "Hello"}]}) for i in range(5)) + "\n")
    out = tmp_path / "answers.jsonl"
    assert main(["chat", str(lively_vlm_dir), "--batch", str(requests), "--out", str(out), "--batch-size", "2",
                 "--max-new-tokens", "4"]) == 0
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in answers] == [f"r{i}" for i in range(5)]
    assert all(isinstance(a["prediction"], str) for a in answers)


def test_cli_repl_multi_turn_with_image_command(lively_vlm_dir, tmp_path, capsys, monkeypatch):
    RED.save(tmp_path / "red.png")
    lines = iter([f"/image {tmp_path / 'red.png'}", "What is it?", "/image nope.png", "And again?", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", str(lively_vlm_dir), "--max-new-tokens", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("vlm> ") == 2 and "image attached" in captured.out
    assert "nope.png: missing image" in captured.err


def test_cli_unreadable_image_is_one_line_exit_2(lively_vlm_dir, tmp_path, capsys):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert main(["chat", str(lively_vlm_dir), "--image", str(tmp_path / "bad.jpg"), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "undecodable" in err and "Traceback" not in err


def test_cli_typed_image_placeholder_is_one_line_exit_2(lively_vlm_dir, capsys, monkeypatch):
    assert main(["chat", str(lively_vlm_dir), "--prompt", "What is in <image>?"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "contains '<image>'" in err and "--image" in err
    lines = iter(["look at <image>", "hi", "/quit"])  # the REPL says so and carries on
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", str(lively_vlm_dir), "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert "contains '<image>'" in captured.err and captured.out.count("vlm> ") == 1


def test_cli_checks_the_image_before_loading_the_model(tmp_path, capsys, monkeypatch):
    import vlmforge.model.load

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the image was checked")

    monkeypatch.setattr(vlmforge.model.load, "load", no_loading)
    assert main(["chat", str(tmp_path), "--image", str(tmp_path / "missing.png"), "--prompt", "hi"]) == 2
    assert "missing.png: missing image" in capsys.readouterr().err
