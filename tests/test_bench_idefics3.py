"""`vlmforge bench --config tiny-idefics3`: the Idefics3 case against TRL on the same tokens, its image token
counts asked of the processor (and consumed by the model), `--plan`'s count, FLOPs of tiles. No timing asserts."""

import json

import pytest
import torch
from PIL import Image

from vlmforge.bench.configs import get_config
from vlmforge.bench.flops import ModelShape, StepTokens, training_flops, vision_inputs
from vlmforge.cli import main

COUNTS = {"image_size": 64, "grid": [2, 2], "image_tokens": 20, "layout_tokens": 14, "total": 34}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """The shipped default baseline (TRL, the `bench` extra CI installs) on tiny-idefics3, its folders kept."""
    pytest.importorskip("trl")
    folder = tmp_path_factory.mktemp("bench-idefics3")
    out = folder / "out.json"
    assert main(["bench", "--config", "tiny-idefics3", "--steps", "2", "--work-dir", str(folder / "work"),
                 "--json", str(out)]) == 0
    return json.loads(out.read_text()), folder / "work"


def test_idefics3_case_compares_with_trl_on_the_same_tokens(bench_run):
    report, _ = bench_run
    training = report["training"]
    assert report["config"] == "tiny-idefics3" and training["baseline_name"] == "trl"
    ours, theirs = training["vlmforge"], training["baseline"]
    assert ours["steps"] == theirs["steps"] == 2 and ours["real_tokens_per_s"] > 0 and training["speedup"] > 0
    for key in ("real_tokens", "trained_tokens", "samples"):
        assert ours[key] == theirs[key], key
    # same model, same samples, LoRA B = 0: TRL's collator (Idefics3Processor) gives vlmforge's first loss
    assert training["trainable_params"]["vlmforge"] == training["trainable_params"]["baseline"] > 0
    assert training["step1_loss"]["baseline"] == pytest.approx(training["step1_loss"]["vlmforge"], rel=1e-4)
    # the same tiles counted on both sides: zero padding tiles (different per side's batches) are not work
    assert ours["flops_per_step"] == pytest.approx(theirs["flops_per_step"])
    assert report["inference"]["vlmforge"]["batch_8"]["decode_tokens_per_s"] > 0


def test_image_tokens_come_from_the_processor_and_fill_the_model(bench_run):
    """The report's count is the trainer's processor's, and the model's connector emits exactly that many features."""
    from vlmforge.model.load import load

    report, work = bench_run
    assert report["images"] == {"arch": "idefics3", **COUNTS}
    model, processor = load(work / "model" / "model")
    assert type(model).__name__ == "Idefics3ForConditionalGeneration" and model.config.scale_factor == 2
    inputs = processor(text="<image>\nWhat is this?", images=[Image.new("RGB", (64, 64), "red")], return_tensors="pt")
    image_id = model.config.image_token_id
    assert int((inputs["input_ids"] == image_id).sum()) == COUNTS["image_tokens"]
    assert vision_inputs(inputs["pixel_values"]) == 2 * 2 + 1  # four tiles and the global view
    with torch.no_grad():  # the connector's output: one (tokens, D) per sample
        (features,) = model.model.get_image_features(inputs["pixel_values"], inputs["pixel_attention_mask"]).pooler_output
    assert features.shape == (COUNTS["image_tokens"], model.config.text_config.hidden_size)


def test_plan_prints_the_processors_count_per_image(bench_run, capsys):
    from vlmforge.bench.plan import plan_recipe

    report, _ = bench_run
    result, title = plan_recipe("instruct-lora", gpu_gb=24, bench_config="tiny-idefics3")
    assert result["bench_images"] == {key: value for key, value in report["images"].items() if key != "arch"}
    assert "4 image tokens per 32-pixel tile" in result["image_tokens"] and "bench config tiny-idefics3" in title
    assert main(["bench", "--plan", "instruct-lora", "--config", "tiny-idefics3", "--gpu-gb", "24"]) == 0
    out = capsys.readouterr().out
    assert "20 image + 14 layout = 34 tokens per 64-px image (2x2 tiles + a global view)" in out


def test_plan_of_a_llava_config_is_unchanged():
    from vlmforge.bench.plan import plan_recipe

    result, _ = plan_recipe("instruct-lora", gpu_gb=24, bench_config="small")
    assert result["image_tokens"].startswith("196 image tokens per image") and "bench_images" not in result


def test_pixel_shuffle_flops_match_a_hand_count():
    # one tile of 4 patches (16 px, patch 8), shuffle 2: one LLM token per tile; connector Linear(4·8 → 16)
    shape = ModelShape(image_size=16, patch_size=8, channels=3, vision_hidden=8, vision_layers=1, vision_intermediate=16,
                       hidden=16, layers=1, heads=2, kv_heads=1, head_dim=8, intermediate=32, vocab=100,
                       connector="pixel_shuffle", scale=2)
    llava = ModelShape(**{**vars(shape), "connector": "mlp", "scale": 1})
    step = StepTokens(lengths=(10,), images=3, trained_tokens=4)  # three tiles
    assert (shape.tokens_per_view, shape.projector_params) == (1, 4 * 8 * 16)
    difference = training_flops(llava, step).total - training_flops(shape, step).total
    # Llava: 8·16 + 16·16 = 384 weights on 4 tokens a tile, forward + weight grads + linear_2's input grads
    llava_projector = 2 * 384 * 12 + 2 * 384 * 12 + 2 * 16 * 16 * 12
    shuffle_projector = 2 * 512 * 3 + 2 * 512 * 3  # 512 weights on 1 token a tile; frozen tower: no input grads
    assert difference == llava_projector - shuffle_projector


def test_vision_inputs_skips_padding_tiles():
    pixels = torch.randn(2, 3, 3, 4, 4)  # (B, N_tiles, C, H, W)
    pixels[1, 2] = 0  # the second sample's padding tile
    assert vision_inputs(pixels) == 5 and vision_inputs(torch.randn(3, 3, 4, 4)) == 3 and vision_inputs(None) == 0


def test_naive_baseline_refuses_idefics3_with_one_line(capsys):
    assert get_config("tiny-idefics3").arch == "idefics3"
    assert main(["bench", "--config", "tiny-idefics3", "--baseline", "naive"]) == 2
    err = capsys.readouterr().err
    assert "--baseline naive runs Llava models only" in err and "Traceback" not in err


def test_only_idefics3s_processor_is_wrapped_and_it_keeps_offsets_as_lists(bench_run, tiny_vlm_dir):
    from transformers import AutoProcessor

    from vlmforge.bench.trl_baseline import keep_offsets_as_lists

    _, work = bench_run
    llava, idefics3 = AutoProcessor.from_pretrained(tiny_vlm_dir), AutoProcessor.from_pretrained(work / "model" / "model")
    keep_offsets_as_lists(llava)
    assert type(llava).__name__ == "LlavaProcessor"  # the generic call already leaves the offsets alone
    keep_offsets_as_lists(idefics3)
    out = idefics3(text=["<image>\nWhat?"], images=[[Image.new("RGB", (64, 32))]], return_tensors="pt",
                   return_text_replacement_offsets=True)
    assert isinstance(out["text_replacement_offsets"], list) and out["input_ids"].dim() == 2
