"""Training tokenisation: exact trained spans per template (golden), masks, image tokens, too-long policies."""

import json
from pathlib import Path

import pytest

from data_helpers import LABEL_CONVERSATIONS, make_processor_folder, make_tokenizer, marked_training_text
from vlmforge.data.tokenize import IGNORE_INDEX, encode_conversation, encode_prompt, image_tokens_per_image
from vlmforge.errors import DataError, ModelError

GOLDEN = json.loads((Path(__file__).parent / "fixtures/data/expected/label_spans.json").read_text(encoding="utf-8"))
STYLES = ("chatml", "llama3")
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}


@pytest.fixture(scope="module", params=STYLES)
def styled_tokenizer(request):
    return request.param, make_tokenizer(request.param)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_trained_spans_match_golden(styled_tokenizer, language):
    style, tokenizer = styled_tokenizer
    assert marked_training_text(LABEL_CONVERSATIONS[language], tokenizer) == GOLDEN[style][language]


@pytest.mark.parametrize("language", ["en", "zh"])
def test_every_assistant_turn_and_its_end_of_turn_token_is_trained(styled_tokenizer, language):
    style, tokenizer = styled_tokenizer
    messages = LABEL_CONVERSATIONS[language]
    marked = GOLDEN[style][language]
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert marked.count("⟦") == len(answers)
    for answer in answers:
        assert f"⟦{answer}{END_OF_TURN[style]}⟧" in marked
    prompts = [m["content"].replace("<image>", "<image><image>") for m in messages if m["role"] != "assistant"]
    trained_text = "".join(part.split("⟧")[0] for part in marked.split("⟦")[1:])
    assert not any(prompt in trained_text for prompt in prompts)


def test_labels_equal_ids_where_trained_and_never_on_image_tokens(styled_tokenizer):
    style, tokenizer = styled_tokenizer
    sample = encode_conversation(LABEL_CONVERSATIONS["en"], tokenizer, "<image>", 5, None)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert len(sample.input_ids) == len(sample.labels) and sample.num_images == 1
    assert sample.input_ids.count(image_id) == 5
    assert image_id not in sample.labels
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(sample.input_ids, sample.labels))
    trained = [label for label in sample.labels if label != IGNORE_INDEX]
    assert tokenizer.decode(trained[-1:]) == END_OF_TURN[style]


def test_prompt_for_inference_is_the_training_prefix(styled_tokenizer):
    _, tokenizer = styled_tokenizer
    messages = LABEL_CONVERSATIONS["zh"][:2]
    sample = encode_conversation(messages, tokenizer, "<image>", 4, None)
    prompt = encode_prompt(messages[:1], tokenizer, "<image>", 4)
    first_trained = next(i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX)
    assert sample.input_ids[:first_trained] == prompt


def test_too_long_drop_and_truncate_never_cut_image_tokens():
    tokenizer = make_tokenizer("chatml")
    messages = [{"role": "user", "content": "<image>\nDescribe."}, {"role": "assistant", "content": "Two dogs play with a ball on the green grass."}]
    full = encode_conversation(messages, tokenizer, "<image>", 8, None)
    image_end = max(i for i, token in enumerate(full.input_ids) if token == tokenizer.convert_tokens_to_ids("<image>")) + 1
    first_trained = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    assert encode_conversation(messages, tokenizer, "<image>", 8, len(full.input_ids)) == full
    assert encode_conversation(messages, tokenizer, "<image>", 8, len(full.input_ids) - 1) is None
    cut = encode_conversation(messages, tokenizer, "<image>", 8, first_trained + 2, too_long="truncate")
    assert cut.input_ids == full.input_ids[: first_trained + 2] and cut.num_trained_tokens == 2
    assert encode_conversation(messages, tokenizer, "<image>", 8, image_end - 1, too_long="truncate") is None
    assert encode_conversation(messages, tokenizer, "<image>", 8, first_trained, too_long="truncate") is None  # nothing to train
    with pytest.raises(DataError, match="too-long policy"):
        encode_conversation(messages, tokenizer, "<image>", 8, 10, too_long="cut")


def test_text_only_conversation_and_bad_image_token():
    tokenizer = make_tokenizer("llama3")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    sample = encode_conversation(messages, tokenizer, "<image>", 4, None)
    assert sample.num_images == 0 and tokenizer.decode([t for t in sample.labels if t != IGNORE_INDEX]) == "Hello.<|eot_id|>"
    with pytest.raises(ModelError, match="not a single token"):
        encode_conversation(messages, tokenizer, "<img>", 4, None)


def test_image_tokens_per_image_counts_the_processor_expansion(tmp_path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(make_processor_folder(tmp_path / "proc", image_side=32, patch_size=8))
    assert image_tokens_per_image(processor) == (32 // 8) ** 2


def test_control_token_text_stays_plain_under_a_trimming_template_and_a_rewriting_one_is_refused():
    from vlmforge.data.tokenize import control_tokens

    tokenizer = make_tokenizer("llama3")
    tokenizer.chat_template = tokenizer.chat_template.replace("message['content']", "(message['content'] | trim)")
    messages = [{"role": "user", "content": "  hi <|eot_id|> x  "}, {"role": "assistant", "content": " ok<|eot_id|>\n"}]
    sample = encode_conversation(messages, tokenizer, "<image>", 2, None)
    control = {tokenizer.convert_tokens_to_ids(token) for token in control_tokens(tokenizer)}
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert [token for token in sample.input_ids if token in control].count(eot) == 2  # the template's two, not four
    assert "hi <|eot_id|> x<|eot_id|>" in tokenizer.decode(sample.input_ids)
    tokenizer.chat_template = tokenizer.chat_template.replace("| trim", "| upper")
    with pytest.raises(DataError, match=r"message 0 holds the control-token text '<\|eot_id\|>'"):
        encode_conversation(messages, tokenizer, "<image>", 2, None)


def test_wrapping_an_already_wrapped_template_replaces_its_wrapper():
    from vlmforge.data.chat_templates import CHATML_TEMPLATE, multimodal_chat_template

    once = multimodal_chat_template(CHATML_TEMPLATE)
    assert multimodal_chat_template(once) == once
    text_first = multimodal_chat_template(once, images_after_text=True)
    assert text_first == multimodal_chat_template(CHATML_TEMPLATE, images_after_text=True)
    assert text_first.count("namespace(messages=[])") == 1
