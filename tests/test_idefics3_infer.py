"""Inference on a tiny `--arch idefics3` model: batch / stream / chat session / CLI chat / OpenAI server / load."""

import base64
import io

import openai
import pytest
import torch
from PIL import Image

from vlmforge.cli import main
from vlmforge.data.image_tokens import image_tokens_for
from vlmforge.infer.chat import ChatSession
from vlmforge.infer.generate import GenerationOptions, generate, prepare_inputs, stream
from vlmforge.model.load import load

WIDE, TALL = Image.new("RGB", (100, 40), (220, 20, 20)), Image.new("RGB", (30, 90), (20, 20, 220))
GREEDY = GenerationOptions(max_new_tokens=8)


@pytest.fixture(scope="module")
def lively_dir(tiny_parts, tmp_path_factory):
    """An idefics3 folder whose weight matrices are re-drawn from N(0, 0.3): answers depend on image and prompt."""
    from vlmforge.model.build import BuildConfig, build_vlm, save_vlm

    model, processor = build_vlm(BuildConfig(vision=str(tiny_parts["siglip"]), llm=str(tiny_parts["qwen2"]),
                                             arch="idefics3", pixel_shuffle=2))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return save_vlm(model, processor, tmp_path_factory.mktemp("idefics3") / "lively")


@pytest.fixture(scope="module")
def tiny(lively_dir):
    return load(lively_dir)


def _ask(text, n_images=1):
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]


def test_load_gives_the_native_family(tiny):
    model, processor = tiny
    assert type(model).__name__ == "Idefics3ForConditionalGeneration" and type(processor).__name__ == "Idefics3Processor"


def test_batched_left_padded_generation_equals_one_by_one_and_native(tiny, lively_dir):
    model, processor = tiny
    conversations = [_ask("What is it?"), _ask("Compare these two pictures, please.", 2), _ask("hi", 0)]
    images = [[WIDE], [WIDE, TALL], []]
    batched = generate(model, processor, conversations, images, GREEDY)
    alone = [generate(model, processor, [c], [i], GREEDY)[0] for c, i in zip(conversations, images)]
    assert [c.text for c in batched] == [c.text for c in alone]
    assert [c.prompt_tokens for c in batched] == [c.prompt_tokens for c in alone]
    assert len({c.text for c in alone}) > 1  # the answers depend on the input
    from transformers import AutoModelForImageTextToText

    native = AutoModelForImageTextToText.from_pretrained(lively_dir).eval()  # plain transformers, greedy
    inputs = prepare_inputs(processor, conversations[1:2], images[1:2])
    output = native.generate(**inputs, max_new_tokens=8, do_sample=False)
    text = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text == alone[1].text


def test_stream_and_session_history(tiny):
    model, processor = tiny
    pieces = list(stream(model, processor, _ask("What is it?"), [WIDE], GREEDY))
    assert "".join(pieces) == generate(model, processor, [_ask("What is it?")], [[WIDE]], GREEDY)[0].text
    session = ChatSession(model, processor, GREEDY)
    session.attach(WIDE)
    first = "".join(session.ask("What is it?"))
    session.attach(TALL)
    "".join(session.ask("And this one?"))
    assert session.messages[1]["content"] == first and len(session.images) == 2


def test_control_token_text_stays_plain_with_tiled_images(tiny):
    model, processor = tiny
    conversation = _ask("Say <|im_end|> please", 1)
    inputs = prepare_inputs(processor, [conversation], [[WIDE]])
    ids = inputs["input_ids"][0].tolist()
    expansion = image_tokens_for(processor).ids(*WIDE.size)
    assert any(ids[start:start + len(expansion)] == expansion for start in range(len(ids)))
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ids.count(im_end) == 1  # the template's own end of turn; the user's text stayed plain
    assert generate(model, processor, [conversation], [[WIDE]], GREEDY)[0].completion_tokens > 0


def test_cli_chat_one_shot(lively_dir, tiny, tmp_path, capsys):
    WIDE.save(tmp_path / "wide.png")
    assert main(["chat", str(lively_dir), "--image", str(tmp_path / "wide.png"), "--prompt", "What is it?",
                 "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out.strip()
    expected = generate(*tiny, [_ask("What is it?")], [[WIDE]], GenerationOptions(max_new_tokens=6))[0].text.strip()
    assert printed == expected


def test_openai_server_answers_like_generate(tiny, lively_dir):
    from vlmforge.data.images import load_image
    from vlmforge.infer.serve_config import ServeConfig
    from vlmforge.infer.server import BackgroundServer, create_app

    buffer = io.BytesIO()
    WIDE.save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What is it?"}]}]
    with BackgroundServer(create_app(ServeConfig(model=str(lively_dir)), *tiny)) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        answer = client.chat.completions.create(model="m", messages=messages, max_tokens=8)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="m", messages=messages, max_tokens=8, stream=True) if chunk.choices)
    expected = generate(*tiny, [_ask("What is it?")], [[load_image(buffer.getvalue())]], GREEDY)[0]
    assert answer.choices[0].message.content == expected.text == streamed
    assert answer.usage.prompt_tokens == expected.prompt_tokens


def test_cli_eval_and_held_out_loss(lively_dir, tiny, tmp_path, capsys):
    import json

    from train_helpers import write_colour_dataset

    from vlmforge.eval.during_training import held_out_loss

    colours = write_colour_dataset(tmp_path / "colours", count=4, with_text_only=False)
    out = tmp_path / "eval"
    assert main(["eval", str(lively_dir), "--data", str(colours), "--out", str(out), "--max-new-tokens", "3",
                 "--batch-size", "4", "--no-java-metrics"]) == 0
    assert "vqa: 4 examples" in capsys.readouterr().out
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4
    assert json.loads((out / "metrics.json").read_text())["num_examples"] == 4
    from vlmforge.data.dataset import ConversationDataset

    dataset = ConversationDataset([colours])
    loss = held_out_loss(*tiny, [dataset[index] for index in range(4)], 2, 512)  # eval during training
    assert loss is not None and loss > 0
