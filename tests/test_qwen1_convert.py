"""`vlmforge convert-llm qwen1`: first-generation Qwen (remote-code `QWenLMHeadModel`) → native Qwen2.

A tiny random checkpoint is written with the ORIGINAL tensor names and config keys, next to a small
generated `qwen.tiktoken` vocabulary and a `modeling_qwen.py` that fails if anything imports it.
The converted folder must load with AutoModelForCausalLM / AutoTokenizer alone, give the logits of
a reference forward written here from the original architecture, and tokenise like tiktoken.
"""

import base64
import json
import math
import random
import unicodedata

import pytest
import torch
import torch.nn.functional as F

from vlmforge.cli import main
from vlmforge.model.qwen1 import REPORT_FILE, convert_qwen1, native_llm_path
from vlmforge.model.qwen1_tokenizer import QWEN_PATTERN, SPECIAL_TOKENS

HIDDEN, HEADS, LAYERS, FFN = 64, 4, 2, 96  # FFN: the size of w1 / w2 each; config says 2 × FFN
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024; we're testing tokenizers, aren't we?",
    "今天天气很好，我们去公园散步吧。人工智能正在改变世界，视觉语言模型可以看图说话。",
    "def forward(self, x):\n    return self.c_proj(self.w1(x) * F.silu(self.w2(x)))\n\n",
    "for (int i = 0; i < n; ++i) { total += values[i] * 0.5f; }\t// loop\r\n",
    "Emoji 😀🎉👍🏽 and numbers 1234567890, URLs https://example.com/a?b=c&d=%20",
]


# --------------------------------------------------------------------------- the source folder


def _write_tiktoken(path):
    """A small byte-level BPE trained with `tokenizers`, written as tiktoken ranks: 256 bytes, then merges."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    ranks = {bytes([b]): b for b in range(256)}
    for merge in json.loads(tokenizer.to_str())["model"]["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        ranks.setdefault(bytes(to_byte[c] for c in left + right), len(ranks))
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    return ranks


def _original_config(vocab_size):
    """config.json keys of Qwen-7B (later release), tiny sizes."""
    return {
        "architectures": ["QWenLMHeadModel"], "model_type": "qwen",
        "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        "hidden_size": HIDDEN, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
        "intermediate_size": 2 * FFN, "kv_channels": HIDDEN // HEADS, "layer_norm_epsilon": 1e-6,
        "max_position_embeddings": 64, "seq_length": 64, "rotary_emb_base": 10000, "rotary_pct": 1.0,
        "no_bias": True, "scale_attn_weights": True, "tie_word_embeddings": False, "vocab_size": vocab_size,
        "use_dynamic_ntk": True, "use_logn_attn": True, "use_flash_attn": "auto", "bf16": False, "fp16": False,
        "fp32": False, "tokenizer_class": "QWenTokenizer",
    }


def _original_weights(vocab_size, seed=0):
    """Random weights under the original names (`transformer.h.N.attn.c_attn`, `mlp.w1`, ...)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=generator) * scale

    weights = {"transformer.wte.weight": rand(vocab_size, HIDDEN, scale=1.0), "lm_head.weight": rand(vocab_size, HIDDEN),
               "transformer.ln_f.weight": 1 + rand(HIDDEN, scale=0.1)}
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        weights |= {
            p + "ln_1.weight": 1 + rand(HIDDEN, scale=0.1), p + "ln_2.weight": 1 + rand(HIDDEN, scale=0.1),
            p + "attn.c_attn.weight": rand(3 * HIDDEN, HIDDEN), p + "attn.c_attn.bias": rand(3 * HIDDEN),
            p + "attn.c_proj.weight": rand(HIDDEN, HIDDEN), p + "mlp.w1.weight": rand(FFN, HIDDEN),
            p + "mlp.w2.weight": rand(FFN, HIDDEN), p + "mlp.c_proj.weight": rand(HIDDEN, FFN),
            p + "attn.rotary_emb.inv_freq": rand(HIDDEN // HEADS // 2),  # a saved buffer: dropped
        }
    return weights


def _write_qwen1_folder(folder, ranks_file, fmt="safetensors", chat=True):
    """A first-generation Qwen folder: config, two weight shards + index, vocabulary, remote code."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    ranks = ranks_file.read_text().splitlines()
    vocab_size = (len(ranks) + len(SPECIAL_TOKENS) + 63) // 64 * 64  # padded, as Qwen-7B's 151936
    (folder / "config.json").write_text(json.dumps(_original_config(vocab_size)))
    (folder / "qwen.tiktoken").write_text(ranks_file.read_text())
    (folder / "generation_config.json").write_text(json.dumps({"chat_format": "chatml" if chat else "raw"}))
    (folder / "modeling_qwen.py").write_text("raise RuntimeError('remote code must never run')\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]}}))
    weights = _original_weights(vocab_size)
    names = sorted(weights)
    shards = {"a": names[: len(names) // 2], "b": names[len(names) // 2:]}
    weight_map = {}
    for key, shard_names in shards.items():
        file_name = f"model-{key}.{'safetensors' if fmt == 'safetensors' else 'bin'}"
        part = {name: weights[name] for name in shard_names}
        save_file(part, folder / file_name) if fmt == "safetensors" else torch.save(part, folder / file_name)
        weight_map |= dict.fromkeys(shard_names, file_name)
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weights


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "qwen.tiktoken"
    return path, _write_tiktoken(path)


@pytest.fixture(scope="module")
def qwen1(tmp_path_factory, vocabulary):
    """(source folder, original weights, converted folder) for a sharded safetensors checkpoint."""
    root = tmp_path_factory.mktemp("qwen1")
    weights = _write_qwen1_folder(root / "Qwen-7B-Chat", vocabulary[0])
    assert main(["convert-llm", "qwen1", str(root / "Qwen-7B-Chat"), "--out", str(root / "native")]) == 0
    return root / "Qwen-7B-Chat", weights, root / "native"


# --------------------------------------------------------------------------- the reference forward


def _rms_norm(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate(x, positions):
    """Rotary on the whole head dim, halves rotated (x1, x2) → (-x2, x1), base rotary_emb_base."""
    dim = x.shape[-1]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    freqs = torch.outer(positions.float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)[None, :, None, :]  # (1, T, 1, d)
    x1, x2 = x[..., : dim // 2], x[..., dim // 2:]
    return x * emb.cos() + torch.cat((-x2, x1), dim=-1) * emb.sin()


def reference_logits(w, input_ids):
    """The first-generation QWenLMHeadModel forward, within the trained context (no NTK / log-n effect)."""
    batch, length = input_ids.shape
    head_dim = HIDDEN // HEADS
    h = w["transformer.wte.weight"][input_ids]  # (B, T, D)
    mask = torch.ones(length, length, dtype=torch.bool).tril()
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        x = _rms_norm(h, w[p + "ln_1.weight"])
        qkv = x @ w[p + "attn.c_attn.weight"].T + w[p + "attn.c_attn.bias"]
        q, k, v = (t.view(batch, length, HEADS, head_dim) for t in qkv.split(HIDDEN, dim=2))
        q, k = _rotate(q, torch.arange(length)), _rotate(k, torch.arange(length))
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))  # (B, H, T, d)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, HIDDEN)
        h = h + context @ w[p + "attn.c_proj.weight"].T
        x = _rms_norm(h, w[p + "ln_2.weight"])
        a1, a2 = x @ w[p + "mlp.w1.weight"].T, x @ w[p + "mlp.w2.weight"].T
        h = h + (a1 * F.silu(a2)) @ w[p + "mlp.c_proj.weight"].T
    return _rms_norm(h, w["transformer.ln_f.weight"]) @ w["lm_head.weight"].T


def _native_logits(folder, input_ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(model).__name__ == "Qwen2ForCausalLM"
    with torch.no_grad():
        return model(input_ids=input_ids).logits


# --------------------------------------------------------------------------- model


def test_converted_model_logits_equal_the_original_architecture(qwen1):
    _, weights, native = qwen1
    input_ids = torch.randint(0, 400, (2, 24), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_native_logits(native, input_ids), reference_logits(weights, input_ids),
                               rtol=1e-4, atol=1e-4)


def test_swapping_gate_and_up_would_be_caught(qwen1):
    """The reference is sensitive to w1/w2: with them swapped the logits differ (so the test above can fail)."""
    _, weights, native = qwen1
    swapped = dict(weights)
    for i in range(LAYERS):
        p = f"transformer.h.{i}.mlp."
        swapped[p + "w1.weight"], swapped[p + "w2.weight"] = weights[p + "w2.weight"], weights[p + "w1.weight"]
    input_ids = torch.arange(16)[None]
    assert (_native_logits(native, input_ids) - reference_logits(swapped, input_ids)).abs().max() > 1e-2


def test_converted_folder_is_native_and_reports_dropped_features(qwen1):
    source, _, native = qwen1
    config = json.loads((native / "config.json").read_text())
    assert config["model_type"] == "qwen2" and "auto_map" not in config
    assert config["intermediate_size"] == FFN and config["max_position_embeddings"] == 64
    assert not list(native.glob("*.py")) and not list(native.glob("*.bin")) and not list(native.glob("*.tiktoken"))
    assert "auto_map" not in json.loads((native / "tokenizer_config.json").read_text())
    assert len(list(native.glob("model-*.safetensors"))) == 2  # one output shard per source shard
    report = json.loads((native / REPORT_FILE).read_text())
    assert report["chat"] is True and report["shards"] == 2
    assert any("dynamic NTK" in text for text in report["dropped"])
    assert any("log-n" in text for text in report["dropped"])


def test_bin_shards_convert_through_weights_only_loading(tmp_path, vocabulary):
    weights = _write_qwen1_folder(tmp_path / "src", vocabulary[0], fmt="bin", chat=False)
    report = convert_qwen1(tmp_path / "src", tmp_path / "out")
    assert report.chat is False and report.tensors == 3 + LAYERS * 12  # per layer: 2 norms, q/k/v weight+bias, o, gate, up, down
    input_ids = torch.arange(20)[None]
    torch.testing.assert_close(_native_logits(tmp_path / "out", input_ids), reference_logits(weights, input_ids),
                               rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- tokenizer


def _strings():
    """A few hundred strings: the corpus, pieces of it, mixed scripts, whitespace, specials, NFD, random."""
    rng = random.Random(0)
    fixed = CORPUS + [
        "Hello<|im_start|>user\nhi<|im_end|>\n", "<|endoftext|>", "<|extra_0|><|extra_204|>x", "I'M HERE'S THE DOG'LL",
        "  \n\n  x\t\ty   ", "\r\n\r\n", "e\u0301 cafe\u0301 ﬁ Å", "a  b   c    ", "12345 ١٢٣ ⅷ", "naïve résumé Ünïcödé",
        "🏳️‍🌈 👨‍👩‍👧 🇨🇳", "混合 mixed 文字 text 123", "<|im_start|", "|>", "<|unknown|>", "",
        "\u00a0\u2003\u3000full width space", "ＡＢＣ１２３", "\x00\x01 control \x7f", "a" * 300, "我" * 50,
    ]
    pool = "".join(CORPUS) + "\u0301\u00a0\u3000😀 \n\t'sS<|>"
    randoms = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 60))) for _ in range(300)]
    pieces = [text[a:b] for text in CORPUS for a, b in [(3, 17), (0, 40), (10, 90)]]
    return fixed + randoms + pieces


def test_tokenizer_equals_tiktoken(qwen1, vocabulary):
    from transformers import AutoTokenizer

    tiktoken = pytest.importorskip("tiktoken")  # in the `test` extra
    _, ranks = vocabulary
    tokenizer = AutoTokenizer.from_pretrained(qwen1[2])
    encoding = tiktoken.Encoding("qwen-tiny", pat_str=QWEN_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={token: len(ranks) + i for i, token in enumerate(SPECIAL_TOKENS)})
    strings = _strings()
    assert len(strings) >= 300
    for text in strings:
        # Qwen's tokenizer NFC-normalises the text, then encodes with every special token allowed.
        expected = encoding.encode(unicodedata.normalize("NFC", text), allowed_special="all")
        assert tokenizer.encode(text, add_special_tokens=False) == expected, repr(text)
        assert tokenizer.decode(expected) == encoding.decode(expected)
    multi_byte = [i for i in tokenizer.encode("".join(CORPUS), add_special_tokens=False) if i >= 256]
    assert len(multi_byte) > 30  # the vocabulary really merges (the test is not over single bytes)


def test_chat_template_is_qwen_chat_chatml(qwen1):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(qwen1[2])
    text = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")
    own_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(own_system, tokenize=False).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    generation = json.loads((qwen1[2] / "generation_config.json").read_text())
    assert set(generation["eos_token_id"]) == {tokenizer.eos_token_id, tokenizer.pad_token_id}


def test_training_labels_cover_each_answer_and_its_im_end(qwen1):
    from transformers import AutoTokenizer

    from vlmforge.data.tokenize import IGNORE_INDEX, encode_conversation
    from vlmforge.model.build import add_image_token

    tokenizer = AutoTokenizer.from_pretrained(qwen1[2])
    add_image_token(tokenizer)  # as `vlmforge build` does
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
                {"role": "user", "content": "今天天气"}, {"role": "assistant", "content": "很好。"}]
    sample = encode_conversation(messages, tokenizer, image_token="<image>", num_image_tokens=4, max_length=None)
    trained = [token for token, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "Hello there.<|im_end|>很好。<|im_end|>"


# --------------------------------------------------------------------------- refusals


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


class NotATensor:
    pass


def test_pickled_objects_in_bin_shards_are_refused(tmp_path, vocabulary, capsys):
    _write_qwen1_folder(tmp_path / "src", vocabulary[0], fmt="bin")
    torch.save({"transformer.wte.weight": NotATensor()}, tmp_path / "src" / "model-a.bin")
    err = _one_line_error(capsys, ["convert-llm", "qwen1", str(tmp_path / "src"), "--out", str(tmp_path / "out")])
    assert "model-a.bin" in err and "safetensors" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))  # nothing half-written


@pytest.mark.parametrize("damage, words", [
    (lambda src: (src / "model-b.safetensors").unlink(), "model-b.safetensors"),
    (lambda src: (src / "qwen.tiktoken").unlink(), "qwen.tiktoken"),
    (lambda src: (src / "config.json").write_text(json.dumps({"model_type": "llama"})), "'llama'"),
    (lambda src: (src / "config.json").write_text(json.dumps({**_original_config(64), "rotary_pct": 0.5})), "rotary"),
])
def test_wrong_or_partial_folders_get_one_line(tmp_path, vocabulary, capsys, damage, words):
    _write_qwen1_folder(tmp_path / "src", vocabulary[0])
    damage(tmp_path / "src")
    err = _one_line_error(capsys, ["convert-llm", "qwen1", str(tmp_path / "src"), "--out", str(tmp_path / "out")])
    assert words in err
    assert not (tmp_path / "out").exists()


def test_checkpoint_missing_a_tensor_is_refused(tmp_path, vocabulary, capsys):
    from safetensors.torch import load_file, save_file

    _write_qwen1_folder(tmp_path / "src", vocabulary[0])
    shard = load_file(tmp_path / "src" / "model-b.safetensors")
    save_file({k: v for k, v in shard.items() if k != "transformer.h.1.mlp.w2.weight"}, tmp_path / "src" / "model-b.safetensors")
    err = _one_line_error(capsys, ["convert-llm", "qwen1", str(tmp_path / "src"), "--out", str(tmp_path / "out")])
    assert "lacks 1 tensor" in err and "gate_proj" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- build on the way


def test_native_llm_path_converts_once_and_leaves_other_folders_alone(qwen1, tmp_path, tiny_parts):
    source, weights, _ = qwen1
    assert native_llm_path(str(tiny_parts["qwen2"]), cache_dir=tmp_path) == str(tiny_parts["qwen2"])
    first = native_llm_path(str(source), cache_dir=tmp_path)
    mtime = (tmp_path / first / REPORT_FILE).stat().st_mtime_ns
    assert native_llm_path(str(source), cache_dir=tmp_path) == first  # reused, not converted again
    assert (tmp_path / first / REPORT_FILE).stat().st_mtime_ns == mtime
    input_ids = torch.arange(12)[None]
    torch.testing.assert_close(_native_logits(first, input_ids), reference_logits(weights, input_ids), rtol=1e-4, atol=1e-4)


def test_build_accepts_the_original_qwen_folder(qwen1, tmp_path, tiny_parts, monkeypatch):
    from vlmforge.model.build import BuildConfig, build_vlm

    monkeypatch.setenv("VLMFORGE_CACHE", str(tmp_path / "cache"))
    model, processor = build_vlm(BuildConfig(vision=str(tiny_parts["siglip"]), llm=str(qwen1[0])))
    assert model.config.text_config.model_type == "qwen2"
    assert list((tmp_path / "cache" / "converted").iterdir())
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                         add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
