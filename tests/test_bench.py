"""`vlmforge bench`: the report it writes (against TRL's SFTTrainer and the naive loop), FLOPs counted by
hand, exact token lengths, the levers' numerics (grouping, LM head on trained positions only, bf16)
against the plain path, the breakdown. No timing asserts."""

import json

import pytest
import torch

from vlmforge.bench.configs import CONFIGS, get_config
from vlmforge.bench.flops import ModelShape, StepTokens, batch_step_tokens, training_flops
from vlmforge.bench.synthetic_data import write_bench_dataset
from vlmforge.cli import main
from vlmforge.data.records import validate_record
from vlmforge.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    """The shipped default (TRL when installed: the `bench` extra CI installs), with the breakdown."""
    pytest.importorskip("trl")
    out = tmp_path_factory.mktemp("bench") / "out.json"
    assert main(["bench", "--config", "tiny", "--steps", "2", "--breakdown", "--json", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def naive_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-naive") / "out.json"
    assert main(["bench", "--config", "tiny", "--steps", "1", "--baseline", "naive", "--no-generation",
                 "--json", str(out)]) == 0
    return json.loads(out.read_text())


SIDE_KEYS = {"precision", "steps", "real_tokens", "padded_tokens", "trained_tokens", "samples", "seconds", "median_step_s",
             "data_s_per_step", "cpu_s_per_step", "real_tokens_per_cpu_s", "real_tokens_per_s", "samples_per_s", "pad_fraction", "flops_per_step",
             "executed_flops_per_step", "six_n_t_per_step", "achieved_tflops", "ceiling_tflops", "mfu", "peak_memory_mb",
             "resident_mb", "step_peak_mb", "final_loss", "step1_loss", "trainable_params"}


def test_tiny_bench_writes_every_key(tiny_report):
    assert {"config", "steps", "baseline", "machine", "gemm", "training", "inference", "breakdown"} <= set(tiny_report)
    assert tiny_report["baseline"] == "trl"  # the default when TRL is installed
    training = tiny_report["training"]
    assert {"vlmforge", "baseline", "baseline_name", "speedup", "cpu_time_speedup", "pad_fraction", "mfu", "flops_per_step", "step1_loss",
            "trainable_params"} <= set(training)
    assert SIDE_KEYS <= set(training["vlmforge"]) and SIDE_KEYS <= set(training["baseline"])
    assert training["speedup"] > 0 and 0 <= training["pad_fraction"] < 1 and training["mfu"] > 0
    for side in ("vlmforge", "baseline"):
        summary = training[side]
        assert summary["steps"] == 2 and summary["real_tokens_per_s"] > 0 and summary["peak_memory_mb"] > 0
    assert tiny_report["gemm"]["fp32_tflops"] > 0
    for path in ("vlmforge", "plain"):
        for batch in ("batch_1", "batch_8"):
            assert tiny_report["inference"][path][batch]["ttft_ms"] > 0


def test_trl_starts_from_vlmforge_loss_with_the_same_trainable_parameters(tiny_report):
    training = tiny_report["training"]
    assert training["baseline_name"] == "trl"
    # same model, same samples, LoRA B = 0 at the start: TRL's collator and loss give vlmforge's first loss
    assert training["trainable_params"]["vlmforge"] == training["trainable_params"]["baseline"] > 0
    assert training["step1_loss"]["baseline"] == pytest.approx(training["step1_loss"]["vlmforge"], rel=1e-4)
    assert training["step1_loss"]["vlmforge"] > 1.0  # random weights: a real loss, not a masked-out zero


def test_naive_baseline_still_runs(naive_report):
    training = naive_report["training"]
    assert naive_report["baseline"] == training["baseline_name"] == "naive" and naive_report["inference"] is None
    assert SIDE_KEYS <= set(training["baseline"]) and training["speedup"] > 0
    assert training["trainable_params"]["vlmforge"] == training["trainable_params"]["baseline"]  # vision: not in the optimizer
    assert training["step1_loss"]["baseline"] == pytest.approx(training["step1_loss"]["vlmforge"], rel=1e-4)
    assert training["vlmforge"]["real_tokens"] == training["baseline"]["real_tokens"]


def test_breakdown_switches_each_lever_off(tiny_report):
    from vlmforge.bench.levers import LEVERS

    breakdown, ours = tiny_report["breakdown"], tiny_report["training"]["vlmforge"]
    # on a CPU the bench runs LoRA dropout 0, so that lever is measured too; bf16 only where the CPU has it
    native = tiny_report["machine"]["bf16_native"]
    assert set(breakdown) == set(LEVERS) - (set() if native or ours["precision"] == "bf16" else {"precision"})
    assert breakdown["padding"]["pad_fraction"] > ours["pad_fraction"]
    assert "precision" not in breakdown or breakdown["precision"]["precision"] != ours["precision"]
    assert set(tiny_report["phase_seconds"]) == set(tiny_report["phase_cpu_seconds"]) == {"set-up", "training", "generation"}
    assert all(row["real_tokens_per_s"] > 0 and row["gain"] > 0 for row in breakdown.values())


def test_baseline_and_vlmforge_train_on_the_same_tokens(tiny_report):
    ours, theirs = tiny_report["training"]["vlmforge"], tiny_report["training"]["baseline"]
    for key in ("real_tokens", "trained_tokens", "samples"):
        assert ours[key] == theirs[key], key
    assert ours["flops_per_step"] == pytest.approx(theirs["flops_per_step"])  # same work needed...
    assert theirs["executed_flops_per_step"] > ours["executed_flops_per_step"]  # ...the baseline does more
    assert theirs["padded_tokens"] >= ours["padded_tokens"]


HAND_SHAPE = ModelShape(image_size=16, patch_size=8, channels=3, vision_hidden=8, vision_layers=1,
                        vision_intermediate=16, hidden=16, layers=1, heads=2, kv_heads=1, head_dim=8, intermediate=32,
                        vocab=100, lora_rank=2, lora_targets=("q_proj", "v_proj"))
HAND_STEP = StepTokens(lengths=(10, 6), images=1, trained_tokens=5)


def test_flops_match_a_hand_count():
    # vision: 4 patches; layer weights 4·8·8 + 2·8·16 = 512; patch embedding 3·8·8·8 = 1536; attention 4·8·4² = 512
    vision_forward = 2 * (512 + 1536) * 4 + 512
    # projector: 8·16 + 16·16 = 384 weights on 4 image tokens; backward: weight grads + linear_2's input grads
    projector_forward, projector_backward = 2 * 384 * 4, 2 * 384 * 4 + 2 * 16 * 16 * 4
    # LLM: q 256 + k 128 + v 128 + o 256 + gate/up/down 3·512 = 2304; LoRA q 2·(16+16) + v 2·(16+8) = 112
    # 16 tokens; causal pairs 10·11/2 + 6·7/2 = 76; attention 4·8·2·76 = 4864
    llm_forward = 2 * (2304 + 112) * 16 + 4864
    llm_backward = 2 * (2304 + 112) * 16 + 2 * 4864 + 2 * 112 * 16
    head = 2 * 16 * 100 * 5  # 5 trained positions, forward and input-gradient each
    count = training_flops(HAND_SHAPE, HAND_STEP)
    assert count.forward == vision_forward + projector_forward + llm_forward + head == 118144
    assert count.backward == projector_backward + llm_backward + head == 111744
    assert count.six_n_t == 6 * (2304 + 112 + 16 * 100) * 16 + 6 * (512 + 1536 + 384) * 4
    assert count.six_n_t > count.total  # the 6·N·T rule overstates a frozen-base LoRA step


def test_baseline_flops_add_vision_gradients_and_full_logits():
    plain = training_flops(HAND_SHAPE, HAND_STEP)
    naive = training_flops(HAND_SHAPE, HAND_STEP, vision_trained=True, logits_on_all=True)
    vision_backward = 2 * (512 + 1536) * 4 + 2 * 512 * 4 + 2 * 512
    extra_head = 2 * 16 * 100 * (16 - 5)
    assert naive.forward - plain.forward == extra_head
    assert naive.backward - plain.backward == vision_backward + 2 * 8 * 16 * 4 + extra_head


def test_model_shape_counts_the_real_model(tiny_vlm_dir):
    from vlmforge.model.load import load
    from vlmforge.train.recipe import LoraSection
    from vlmforge.train.trainability import set_trainable

    model, _ = load(tiny_vlm_dir, dtype="float32")
    shape = ModelShape.from_llava_config(model.config, lora_rank=4)
    model = set_trainable(model, "frozen", "full", "lora", LoraSection(rank=4, alpha=8, dropout=0.0))
    weights = {name: p.numel() for name, p in model.named_parameters() if p.ndim == 2 or "patch_embedding" in name}
    llm_base = sum(n for name, n in weights.items() if "language_model" in name and "base_layer" in name)
    lora = sum(n for name, n in weights.items() if "lora_" in name)
    vision = sum(n for name, n in weights.items() if "vision_tower" in name and "embeddings" not in name)
    projector = sum(n for name, n in weights.items() if "multi_modal_projector" in name)
    assert (shape.llm_linear_params, shape.lora_params, shape.projector_params) == (llm_base, lora, projector)
    assert shape.vision_layer_params == vision
    assert shape.patch_embed_params == next(p.numel() for name, p in model.named_parameters()
                                            if name.endswith("patch_embedding.weight"))


def test_batch_step_tokens_reads_real_and_padded_lengths():
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])
    batch = {"attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]), "labels": labels,
             "pixel_values": torch.zeros(2, 3, 4, 4)}
    assert batch_step_tokens([batch, None]) == StepTokens((4, 2), 2, 3)
    assert batch_step_tokens([batch], padded=True).lengths == (4, 4)


def test_synthetic_data_is_valid_and_llava_like(tmp_path):
    path = write_bench_dataset(tmp_path, count=200, image_size=32, seed=1)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(validate_record(record) == [] for record in records)
    assert all((tmp_path / image).exists() for record in records for image in record.get("images", []))
    text_only = sum(not record.get("images") for record in records)
    multi_turn = sum(len(record["messages"]) > 2 for record in records)
    answer_words = [len(m["content"].split()) for r in records for m in r["messages"] if m["role"] == "assistant"]
    assert 0.03 < text_only / len(records) < 0.2 and multi_turn > 20
    assert min(answer_words) <= 3 and max(answer_words) >= 100  # short VQA answers to long descriptions


@pytest.mark.parametrize("style", ["chatml", "llama3"])
def test_token_lengths_equal_the_encoded_lengths(tmp_path, style):
    from vlmforge.data.dataset import ConversationDataset
    from vlmforge.data.token_lengths import dataset_token_lengths
    from vlmforge.data.tokenize import encode_conversation
    from vlmforge.model.build import add_image_token
    from vlmforge.model.tiny import make_tokenizer

    tokenizer = make_tokenizer(style)
    add_image_token(tokenizer)
    path = write_bench_dataset(tmp_path, count=60, image_size=16, text_scale=0.5)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[3]["messages"].insert(0, {"role": "system", "content": "You are terse."})
    path.write_text("".join(json.dumps(record) + "\n" for record in records) + "not json\n")
    dataset = ConversationDataset([path], weights=[1.5], seed=3)  # repeated and shuffled rows map back correctly
    lengths = dataset_token_lengths(dataset, tokenizer, "<image>", num_image_tokens=9)
    for index, (file_row, length) in enumerate(zip(dataset.rows, lengths)):
        if file_row == len(records):
            assert length == len(b"not json\n") // 4
            continue
        encoded = encode_conversation(records[file_row]["messages"], tokenizer, "<image>", 9, None)
        assert length == len(encoded.input_ids), index


@pytest.fixture(scope="module")
def tiny_batches(tiny_vlm_dir, tmp_path_factory):
    """The tiny model with LoRA (fp32) and collated batches of 12 synthetic samples, in two groupings."""
    from vlmforge.data.dataset import ConversationDataset
    from vlmforge.model.load import load
    from vlmforge.train.batching import Collator
    from vlmforge.train.recipe import LoraSection
    from vlmforge.train.trainability import set_trainable

    model, processor = load(tiny_vlm_dir, dtype="float32")
    torch.manual_seed(0)
    model = set_trainable(model, "frozen", "full", "lora", LoraSection(rank=4, alpha=8, dropout=0.0))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # non-zero adapters, so LoRA takes part in the numerics
            torch.nn.init.normal_(parameter, std=0.02)
    path = write_bench_dataset(tmp_path_factory.mktemp("lever-data"), count=12, image_size=32, seed=2, text_scale=0.15)
    dataset = ConversationDataset([path])
    collate = Collator(processor, model.config.image_seq_length, max_length=2048)
    samples = [dataset[i] for i in range(12)]
    by_length = sorted(samples, key=lambda s: len(collate.encode(s).input_ids))
    grouped = [collate(by_length[i:i + 4]) for i in range(0, 12, 4)]
    mixed = [collate(samples[i::3]) for i in range(3)]
    return model.eval(), grouped, mixed


def test_lm_head_on_trained_positions_equals_full_logits_loss(tiny_batches):
    from vlmforge.train.steps import summed_loss, trained_token_count

    model, grouped, _ = tiny_batches
    with torch.no_grad():
        for batch in grouped:
            plain = model(**batch).loss  # mean over the batch's trained tokens, full logits
            assert float(summed_loss(model, batch)) / trained_token_count(batch) == pytest.approx(float(plain), rel=1e-5)


def test_length_grouping_does_not_change_the_loss(tiny_batches):
    from vlmforge.train.steps import summed_loss

    model, grouped, mixed = tiny_batches
    with torch.no_grad():
        total_grouped = sum(float(summed_loss(model, batch)) for batch in grouped)
        total_mixed = sum(float(summed_loss(model, batch)) for batch in mixed)
    assert sum(int(b["attention_mask"].numel()) for b in grouped) < sum(int(b["attention_mask"].numel()) for b in mixed)
    assert total_grouped == pytest.approx(total_mixed, rel=1e-5)


def test_bf16_autocast_loss_is_within_tolerance_of_fp32(tiny_batches):
    from vlmforge.train.steps import summed_loss

    model, grouped, _ = tiny_batches
    with torch.no_grad():
        for batch in grouped:
            fp32 = float(summed_loss(model, batch))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = float(summed_loss(model, batch))
            assert bf16 == pytest.approx(fp32, rel=2e-2)


def test_auto_precision_on_cpu_needs_amx(monkeypatch):
    from vlmforge.train.loop import choose_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert choose_precision("auto", cpu) is False  # AVX512-BF16 alone is slower than fp32 (docs/performance.md)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert choose_precision("auto", cpu) is True
    assert choose_precision("fp32", cpu) is False and choose_precision("bf16", cpu) is True


def test_7b_lora_refuses_a_cpu_with_one_line(capsys):
    assert main(["bench", "--config", "7b-lora", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "Traceback" not in err


def test_7b_lora_shapes_on_the_meta_device(tmp_path):
    from vlmforge.bench.models import build_model_folder, instantiate_large

    config = get_config("7b-lora")
    model, processor = instantiate_large(config, build_model_folder(config, tmp_path), "meta")
    language = sum(p.numel() for name, p in model.named_parameters() if "language_model" in name or "lm_head" in name)
    vision = sum(p.numel() for name, p in model.named_parameters() if "vision_tower" in name)
    assert 7.4e9 < language < 7.8e9 and 0.39e9 < vision < 0.44e9  # Qwen2.5-7B, SigLIP-so400m (no head)
    assert model.config.image_seq_length == 729 and processor.image_token == "<image>"
    shape = ModelShape.from_llava_config(model.config, lora_rank=64)
    step = training_flops(shape, StepTokens(lengths=(1000,) * 8, images=8, trained_tokens=2000))
    assert 0.5 < step.total / step.six_n_t < 0.8


def test_unknown_config_and_bad_steps_are_config_errors():
    from vlmforge.bench.runner import run_bench

    with pytest.raises(ConfigError, match="tiny"):
        get_config("huge")
    with pytest.raises(ConfigError, match="steps"):
        run_bench("tiny", steps=0)
    assert set(CONFIGS) == {"tiny", "small", "7b-lora", "tiny-idefics3", "small-idefics3"}


def test_plan_counts_parameters_and_activations_by_hand():
    from vlmforge.bench.plan import CONTEXT_BYTES, activation_bytes_per_token, estimate, parameter_counts

    # vision 512 + 1536, projector 384, LLM linears 2304 + embeddings 100·16 (tied), LoRA 112
    assert parameter_counts(HAND_SHAPE, True, "frozen", "full", "lora") == (512 + 1536 + 384 + 2304 + 1600 + 112, 384 + 112)
    # per layer: norms 8·16, projections' inputs and q, k, v, output 2·(2·16 + 2·16 + 3·8), MLP 2·4·32, LoRA 2·2·2
    per_layer = 128 + 2 * (32 + 32 + 24) + 256 + 8
    assert activation_bytes_per_token(HAND_SHAPE, "lora", checkpointing=False) == per_layer
    assert activation_bytes_per_token(HAND_SHAPE, "lora", checkpointing=True) == 2 * 16 + per_layer
    memory = estimate(HAND_SHAPE, ("frozen", "full", "lora"), batch=2, seq_len=10, checkpointing=False, tied_embeddings=True)
    assert memory.weights == 2 * (6448 - 496) + 4 * 496 and memory.optimizer == 12 * 496
    assert memory.activations == 20 * per_layer and memory.logits == 20 * 0.5 * 100 * 10
    assert memory.total == memory.weights + memory.optimizer + memory.activations + memory.logits + CONTEXT_BYTES


def test_plan_recommends_checkpointing_only_when_needed(capsys):
    from vlmforge.bench.plan import plan_recipe

    roomy, _ = plan_recipe("instruct-lora", gpu_gb=141, bench_config="7b-lora", seq_len=1024)
    tight, _ = plan_recipe("instruct-lora", gpu_gb=24, bench_config="7b-lora", seq_len=2048)
    assert "without gradient checkpointing" in roomy["advice"] and "with gradient checkpointing" in tight["advice"]
    sizes = [row["gb"] for row in roomy["rows"]]
    assert sizes == sorted(sizes) and all(r["gb_checkpointing"] < r["gb"] for r in roomy["rows"])
    assert main(["bench", "--plan", "instruct-lora", "--config", "7b-lora", "--gpu-gb", "16"]) == 0
    assert "does not fit in 16 GB" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--model", "--model.path"])  # --model.path: the same flag as `vlmforge train`
def test_plan_reads_a_model_folder(tiny_vlm_dir, capsys, flag):
    assert main(["bench", "--plan", "instruct-lora", flag, str(tiny_vlm_dir), "--gpu-gb", "8"]) == 0
    out = capsys.readouterr().out
    assert str(tiny_vlm_dir) in out and "micro-batch 32 without gradient checkpointing" in out


def test_trl_training_template_marks_answers_and_their_end():
    from vlmforge.bench.trl_baseline import CHATML_TURN, training_chat_template, trl_messages
    from vlmforge.model.build import add_image_token
    from vlmforge.model.tiny import make_tokenizer

    template = training_chat_template("{%- for message in messages -%}" + CHATML_TURN + "{%- endfor -%}")
    tokenizer = make_tokenizer("chatml")
    add_image_token(tokenizer)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a cat"}]
    out = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    marked = [token for token, mask in zip(out["input_ids"], out["assistant_masks"]) if mask]
    assert tokenizer.decode(marked) == "a cat<|im_end|>"
    assert trl_messages([{"role": "user", "content": "<image>\nWhat?"}, {"role": "assistant", "content": "<image> stays"}]) \
        == [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "<image> stays"}]
    with pytest.raises(ConfigError, match="ChatML"):
        training_chat_template("{{ messages }}")


def test_trl_baseline_without_trl_is_one_line(monkeypatch, capsys):
    import vlmforge.bench.trl_baseline as trl_baseline

    monkeypatch.setattr(trl_baseline, "trl_available", lambda: False)
    assert main(["bench", "--config", "tiny", "--baseline", "trl"]) == 2
    err = capsys.readouterr().err
    assert "[bench]" in err and "Traceback" not in err


def test_export_data_writes_what_another_trainer_needs(tmp_path):
    from vlmforge.bench.runner import export_bench

    folder = export_bench("tiny", tmp_path / "export", steps=2)
    settings = json.loads((folder / "settings.json").read_text())
    config = get_config("tiny")
    assert (folder / settings["model"] / "config.json").exists() and (folder / settings["data"]).exists()
    assert len(settings["indices"]) == 2 * config.global_batch and settings["warmup_indices"] == settings["indices"][:4]
    assert settings["lora_rank"] == config.lora_rank and settings["trainable_params"] > 0
    assert {"q_proj", "down_proj"} <= set(settings["lora_targets"])
