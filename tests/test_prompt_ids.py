"""Inference prompt ids come from `data.tokenize`: they equal the training prefix and the processor's own ids.

The prefix of a training sample up to its last assistant turn (as the training `Collator` encodes
it) is what the model learnt to continue; `prompt_token_ids` (chat, serve, eval) must give exactly
those ids, for ChatML (Qwen2), Llama-3 and a template that writes a default system turn, and for
Idefics3's per-image tile layouts. The processor's own ids (the path inference took before) are the
third witness: for shipped templates nothing changed.
"""

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from data_helpers import make_processor_folder  # noqa: E402

from vlmforge.data.chat_templates import CHATML_TEMPLATE, multimodal_chat_template  # noqa: E402
from vlmforge.data.dataset import Sample  # noqa: E402
from vlmforge.data.tokenize import IGNORE_INDEX, image_tokens_per_image  # noqa: E402
from vlmforge.infer.generate import GenerationOptions, generate, prepare_inputs, prompt_token_ids  # noqa: E402
from vlmforge.train.batching import Collator  # noqa: E402

# Qwen2.5's habit: a system turn of its own when the conversation has none
DEFAULT_SYSTEM_TEMPLATE = multimodal_chat_template(
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}" + CHATML_TEMPLATE
)

RED, BLUE = Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (30, 90), (10, 10, 220))

# (training record messages, images): the prompt is everything before the last assistant turn
CONVERSATIONS = [
    ([{"role": "system", "content": "Be concise."},
      {"role": "user", "content": "<image>\nWhat is happening in this picture?"},
      {"role": "assistant", "content": "A man rides a red bicycle."},
      {"role": "user", "content": "<image>\nAnd here?"},
      {"role": "assistant", "content": "Two dogs play."}], [RED, BLUE]),
    ([{"role": "user", "content": "<image>\n这张图片里有什么？"}, {"role": "assistant", "content": "一个男人。"}], [RED]),
    ([{"role": "user", "content": "How many people are there?"}, {"role": "assistant", "content": "Three."}], []),
]


def as_parts(messages: list[dict]) -> list[dict]:
    """Record messages as a client sends them: `<image>` placeholders become image parts."""
    converted = []
    for message in messages:
        *images, text = message["content"].split("<image>\n")
        parts = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        converted.append({"role": message["role"], "content": parts})
    return converted


def training_prefix(processor, record_messages: list[dict], images: list, num_image_tokens: int) -> list[int]:
    """The training sample's ids (the collator's) before its last assistant turn's first trained token."""
    batch = Collator(processor, num_image_tokens, max_length=4096)([Sample({"messages": record_messages}, images, "t", 1)])
    labels = batch["labels"][0].tolist()
    start = max(i for i in range(1, len(labels)) if labels[i] != IGNORE_INDEX and labels[i - 1] == IGNORE_INDEX)
    return batch["input_ids"][0, :start].tolist()


def processor_ids(processor, messages: list[dict], images: list) -> list[int]:
    """The ids the HF processor writes for the rendered prompt (how inference tokenised before issue 14)."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=text, images=images or None, return_tensors="pt")["input_ids"][0].tolist()


def unpadded_rows(batch) -> list[list[int]]:
    return [[token for token, keep in zip(ids, mask) if keep]
            for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist())]


@pytest.fixture(scope="module", params=["chatml", "llama3", "default-system"])
def llava_processor(request, tmp_path_factory):
    from transformers import AutoProcessor

    style = "chatml" if request.param == "default-system" else request.param
    folder = make_processor_folder(tmp_path_factory.mktemp(request.param) / "p", style=style)
    processor = AutoProcessor.from_pretrained(folder)
    if request.param == "default-system":
        processor.chat_template = processor.tokenizer.chat_template = DEFAULT_SYSTEM_TEMPLATE
    return request.param, processor


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_inference_prompt_ids_equal_the_training_prefix_and_the_processors(llava_processor, index):
    style, processor = llava_processor
    record, images = CONVERSATIONS[index]
    prompt = as_parts(record[:-1])
    ids = prompt_token_ids(processor, prompt, images)
    assert ids == training_prefix(processor, record, images, image_tokens_per_image(processor))
    assert ids == prompt_token_ids(processor, record[:-1], images)  # record strings (batch answering) alike
    assert ids == processor_ids(processor, prompt, images)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert ids.count(image_id) == 16 * len(images)
    if style == "default-system" and index:
        assert processor.tokenizer.decode(ids).count("You are a helpful assistant.") == 1


def test_a_batch_is_the_rows_left_padded_with_the_image_processors_pixels(llava_processor):
    _, processor = llava_processor
    prompts = [as_parts(record[:-1]) for record, _ in CONVERSATIONS]
    images = [row for _, row in CONVERSATIONS]
    batch = prepare_inputs(processor, prompts, images)
    assert unpadded_rows(batch) == [prompt_token_ids(processor, p, i) for p, i in zip(prompts, images)]
    assert batch["input_ids"].shape[1] == max(len(row) for row in unpadded_rows(batch))
    assert batch["attention_mask"][:, -1].all()  # left padded: every row ends at the last column
    flat = [image for row in images for image in row]
    texts = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    processor.tokenizer.padding_side = "left"
    reference = processor(text=texts, images=flat, padding=True, return_tensors="pt")
    assert sorted(batch.keys()) == sorted(reference.keys())
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["pixel_values"], reference["pixel_values"])


def test_idefics3_prompt_ids_hold_each_images_tiles_as_training_does(tiny_parts):
    from vlmforge.model.build import BuildConfig, build_vlm

    _, processor = build_vlm(BuildConfig(vision=str(tiny_parts["siglip"]), llm=str(tiny_parts["qwen2"]),
                                         arch="idefics3", pixel_shuffle=2, longest_edge=96))
    record, images = CONVERSATIONS[0]  # two images of different shapes: different tile grids
    prompt = as_parts(record[:-1])
    ids = prompt_token_ids(processor, prompt, images)
    assert ids == training_prefix(processor, record, images, 0)
    assert ids == processor_ids(processor, prompt, images)
    prompts, rows = [prompt, as_parts(CONVERSATIONS[2][0][:-1])], [images, []]
    batch = prepare_inputs(processor, prompts, rows)
    processor.tokenizer.padding_side = "left"
    reference = processor(text=[processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
                                for p in prompts], images=images, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"):
        assert torch.equal(batch[key], reference[key]), key


def test_generated_answers_equal_those_from_the_processors_inputs(lively_vlm_dir):
    """Greedy answers of `generate` are those of `model.generate` on the processor's own batch."""
    from vlmforge.model.load import load

    model, processor = load(lively_vlm_dir)
    prompts = [as_parts(record[:-1]) for record, _ in CONVERSATIONS]
    images = [row for _, row in CONVERSATIONS]
    answers = generate(model, processor, prompts, images, GenerationOptions(max_new_tokens=6))
    processor.tokenizer.padding_side = "left"
    texts = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    inputs = processor(text=texts, images=[image for row in images for image in row], padding=True, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    new = output[:, inputs["input_ids"].shape[1]:]
    expected = [processor.tokenizer.decode(row, skip_special_tokens=True) for row in new]
    assert [answer.text for answer in answers] == expected
    assert len({answer.text for answer in answers}) > 1  # the answers depend on the input


def test_a_tokenizer_that_adds_bos_itself_still_gets_one_bos(tmp_path):
    """Real Llama-3 tokenizers add <|begin_of_text|> on every encode and the template writes it too: the
    processor's own call doubled it at inference; the data layer (training, and now inference) has one."""
    from tokenizers import processors
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(make_processor_folder(tmp_path / "p", style="llama3"))
    bos = processor.tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    processor.tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    assert processor.tokenizer("Hi")["input_ids"][0] == bos  # the tokenizer adds it by itself now
    record, images = CONVERSATIONS[0]
    ids = prompt_token_ids(processor, as_parts(record[:-1]), images)
    assert ids == training_prefix(processor, record, images, image_tokens_per_image(processor))
    assert ids.count(bos) == 1 and processor_ids(processor, as_parts(record[:-1]), images)[:2] == [bos, bos]
