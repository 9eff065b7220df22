"""First-generation Qwen (Qwen-7B / Qwen-7B-Chat, model type `qwen`) → a native transformers Qwen2 folder.

The original Qwen-7B loads only with remote code (`QWenLMHeadModel`), which vlmforge never runs. Its
architecture is exactly transformers' Qwen2: RMSNorm, rotary on the whole head, a fused `c_attn`
with bias (= q/k/v projections with bias), `c_proj` without bias, and a SwiGLU MLP written as
`c_proj(w1(x) * silu(w2(x)))` — so `w2` is the gate, `w1` the up projection, and the config's
`intermediate_size` counts both halves. Two inference tricks that only act past the trained context
(dynamic NTK rotary scaling, log-n attention scaling) have no Qwen2 equivalent: they are dropped and
reported. Weights stream one shard at a time (read, rename/split, write), so a 7B model converts in a
few GB of RAM; `.bin` shards are read with `weights_only` loading or refused. Nothing in the source
folder is imported or unpickled.

    vlmforge convert-llm qwen1 PATH/Qwen-7B-Chat --out qwen7b-native
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlmforge.errors import ModelError
from vlmforge.model.qwen1_tokenizer import ENDOFTEXT, IM_END, qwen1_tokenizer

log = logging.getLogger(__name__)

QWEN1_MODEL_TYPE = "qwen"
TIKTOKEN_FILE = "qwen.tiktoken"
REPORT_FILE = "conversion_report.json"
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
# Names used by the earliest Qwen-7B release for the keys of the later config.json.
_KEY_ALIASES = {
    "hidden_size": "n_embd", "num_attention_heads": "n_head", "num_hidden_layers": "n_layer",
    "intermediate_size": "ffn_hidden_size", "seq_length": "n_positions",
}
_DROPPED = {
    "use_dynamic_ntk": "dynamic NTK rotary scaling (changes results only past seq_length tokens)",
    "use_logn_attn": "log-n attention scaling (changes results only past seq_length tokens)",
}
# Buffers the original model saves but recomputes; Qwen2 recomputes its own.
_SKIPPED_TENSOR = re.compile(r".*\.attn\.(rotary_emb\.inv_freq|bias|masked_bias)")


@dataclass
class ConversionReport:
    """What `convert_qwen1` did; written as conversion_report.json in the output folder."""

    source: str
    fingerprint: str
    chat: bool
    shards: int = 0
    tensors: int = 0
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read {path}: {error}") from None


def is_qwen1_folder(path: str | Path) -> bool:
    """True when `path` is a local folder whose config.json says model type `qwen` (first generation)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == QWEN1_MODEL_TYPE
    except ValueError:
        return False


def _get(config: dict, key: str, default=None):
    value = config.get(key, config.get(_KEY_ALIASES.get(key, ""), default))
    if value is None:
        raise ModelError(f"config.json of the Qwen folder has no '{key}'")
    return value


def _refuse_unsupported(config: dict) -> None:
    """Variants the original code allows but Qwen2 cannot express; Qwen-7B/14B use none of them."""
    heads, hidden = _get(config, "num_attention_heads"), _get(config, "hidden_size")
    checks = [
        (float(config.get("rotary_pct", 1.0)) == 1.0, f"partial rotary (rotary_pct={config.get('rotary_pct')})"),
        (int(config.get("kv_channels", hidden // heads)) * heads == hidden, "kv_channels × heads ≠ hidden_size"),
        (config.get("no_bias", True) is True, "MLP / output projections with bias (no_bias=false)"),
        (config.get("pos_emb", "rotary") == "rotary", f"position embedding '{config.get('pos_emb')}'"),
        (not config.get("apply_residual_connection_post_layernorm", False), "post-layernorm residuals"),
        (config.get("activation", "swiglu") == "swiglu", f"activation '{config.get('activation')}'"),
    ]
    for ok, what in checks:
        if not ok:
            raise ModelError(f"this Qwen checkpoint uses {what}, which native Qwen2 cannot express; not converted")


def qwen2_config(config: dict):
    """The Qwen2Config equal to a first-generation Qwen config.json (`dtype` set later from the weights)."""
    from transformers import Qwen2Config

    if config.get("model_type") != QWEN1_MODEL_TYPE:
        raise ModelError(f"model type is '{config.get('model_type')}', not '{QWEN1_MODEL_TYPE}' (first-generation Qwen)")
    _refuse_unsupported(config)
    heads = _get(config, "num_attention_heads")
    return Qwen2Config(
        vocab_size=_get(config, "vocab_size"),
        hidden_size=_get(config, "hidden_size"),
        intermediate_size=_get(config, "intermediate_size") // 2,  # w1 and w2 together; each is half
        num_hidden_layers=_get(config, "num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        hidden_act="silu",
        max_position_embeddings=_get(config, "seq_length", config.get("max_position_embeddings")),
        rms_norm_eps=float(_get(config, "layer_norm_epsilon", 1e-6)),
        rope_parameters={"rope_type": "default", "rope_theta": float(_get(config, "rotary_emb_base", 10000))},
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        use_sliding_window=False,
        initializer_range=float(config.get("initializer_range", 0.02)),
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def dropped_features(config: dict) -> list[str]:
    """Descriptions of the enabled original features that the Qwen2 folder does not have."""
    return [text for key, text in _DROPPED.items() if config.get(key)]


def qwen2_tensors(name: str, tensor, hidden_size: int) -> list[tuple[str, object]]:
    """One original tensor → its Qwen2 tensor(s): renamed, `c_attn` split into q/k/v."""
    top = {"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight",
           "lm_head.weight": "lm_head.weight"}
    if name in top:
        return [(top[name], tensor)]
    if _SKIPPED_TENSOR.fullmatch(name):
        return []
    match = re.fullmatch(r"transformer\.h\.(\d+)\.(.+)", name)
    if not match:
        raise ModelError(f"unexpected tensor '{name}' in a first-generation Qwen checkpoint")
    layer, rest = f"model.layers.{match[1]}.", match[2]
    if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
        kind = rest.rsplit(".", 1)[1]
        parts = tensor.split(hidden_size, dim=0)  # fused [q; k; v] along the output dimension
        if len(parts) != 3:
            raise ModelError(f"'{name}' has shape {tuple(tensor.shape)}, not 3 × {hidden_size} rows")
        return [(f"{layer}self_attn.{p}_proj.{kind}", part.clone()) for p, part in zip("qkv", parts)]
    renames = {
        "ln_1.weight": "input_layernorm.weight", "ln_2.weight": "post_attention_layernorm.weight",
        "attn.c_proj.weight": "self_attn.o_proj.weight",
        "mlp.w1.weight": "mlp.up_proj.weight",  # w1(x) multiplies ...
        "mlp.w2.weight": "mlp.gate_proj.weight",  # ... silu(w2(x)): w2 is the gate
        "mlp.c_proj.weight": "mlp.down_proj.weight",
    }
    if rest not in renames:
        raise ModelError(f"unexpected tensor '{name}' in a first-generation Qwen checkpoint")
    return [(layer + renames[rest], tensor)]


def source_shards(src: Path) -> list[Path]:
    """The weight files of `src`, in order; `ModelError` when the index names a file that is missing."""
    for index_name in _INDEX_FILES:
        if (src / index_name).is_file():
            weight_map = read_json(src / index_name).get("weight_map") or {}
            names = list(dict.fromkeys(weight_map.values()))
            missing = [name for name in names if not (src / name).is_file()]
            if missing or not names:
                raise ModelError(f"{src} is incomplete: {index_name} names {len(missing) or 'no'} missing shard(s) "
                                 f"{', '.join(missing[:3])}; download the whole model folder again")
            return [src / name for name in names]
    for name in _SINGLE_FILES:
        if (src / name).is_file():
            return [src / name]
    raise ModelError(f"{src} has no weights (model*.safetensors or pytorch_model*.bin with their index)")


def read_shard(path: Path):
    """Yield `(name, tensor)` of one weight file, one tensor at a time where the format allows."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
        return
    yield from _load_bin(path).items()


def _load_bin(path: Path) -> dict:
    """A `.bin` state dict through `weights_only` loading (memory-mapped when the format allows)."""
    import torch

    advice = "download the model's .safetensors files instead, or convert this file with a tool you trust"
    for mmap in (True, False):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError:
            raise ModelError(f"{path.name} holds pickled objects beyond plain tensors; refused ({advice})") from None
        except RuntimeError as error:
            if not mmap:  # the legacy (non-zip) format cannot be memory-mapped: retried without mmap first
                raise ModelError(f"cannot read {path.name}: {str(error).splitlines()[0]} ({advice})") from None
    raise AssertionError("unreachable")


def fingerprint(src: Path) -> str:
    """Identity of a source folder's content: names, sizes and mtimes of its config and weight files."""
    digest = hashlib.sha256()
    for path in sorted([src / "config.json", src / TIKTOKEN_FILE, *source_shards(src)]):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _is_chat_model(src: Path) -> bool:
    """Qwen-7B-Chat's generation_config.json says chat_format "chatml"; the base model says "raw"."""
    generation = src / "generation_config.json"
    if generation.is_file():
        return read_json(generation).get("chat_format") == "chatml"
    return "chat" in src.resolve().name.lower()


def _expected_shapes(config) -> dict[str, tuple]:
    """Every tensor name and shape of the Qwen2 model, from a model built on the meta device."""
    import torch
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _shard_name(index: int, total: int) -> str:
    return "model.safetensors" if total == 1 else f"model-{index:05d}-of-{total:05d}.safetensors"


def _convert_shards(shards: list[Path], out: Path, config) -> tuple[int, object]:
    """Stream every shard: read, map, check shapes, write; returns (tensor count, dtype)."""
    from safetensors.torch import save_file

    expected, weight_map, total_bytes, dtype = _expected_shapes(config), {}, 0, None
    for number, shard in enumerate(shards, start=1):
        converted = {}
        for name, tensor in read_shard(shard):
            for new_name, new_tensor in qwen2_tensors(name, tensor, config.hidden_size):
                if expected.get(new_name) != tuple(new_tensor.shape):
                    raise ModelError(f"'{name}' → '{new_name}' has shape {tuple(new_tensor.shape)}, config "
                                     f"says {expected.get(new_name, 'no such tensor')}; the checkpoint and config.json disagree")
                converted[new_name] = new_tensor.contiguous()
                dtype = dtype or (new_tensor.dtype if new_tensor.is_floating_point() else None)
        file_name = _shard_name(number, len(shards))
        save_file(converted, str(out / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(converted, file_name))
        total_bytes += sum(t.numel() * t.element_size() for t in converted.values())
        log.info("converted shard %d/%d (%s): %d tensors", number, len(shards), shard.name, len(converted))
        del converted
    missing = sorted(set(expected) - set(weight_map))
    if missing:
        raise ModelError(f"the checkpoint lacks {len(missing)} tensor(s), e.g. {missing[0]}; the folder is incomplete")
    if len(shards) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return len(weight_map), dtype


def _check_source(src: Path) -> dict:
    """Fail before writing anything: a Qwen config, the vocabulary and every shard must be there."""
    if not src.is_dir():
        raise ModelError(f"{src} not found: expected the original model folder (config.json, qwen.tiktoken, weights)")
    if not (src / "config.json").is_file():
        raise ModelError(f"{src} has no config.json: not a model folder")
    config = read_json(src / "config.json")
    qwen2_config(config)  # refuses a wrong model type or an unsupported variant
    if not (src / TIKTOKEN_FILE).is_file():
        raise ModelError(f"{src} has no {TIKTOKEN_FILE}: the tokenizer vocabulary is missing; download the whole folder")
    source_shards(src)
    return config


def convert_qwen1(src: str | Path, out: str | Path) -> ConversionReport:
    """Convert a first-generation Qwen folder into a Qwen2 folder at `out` (written atomically)."""
    from transformers import GenerationConfig

    from vlmforge.utils.atomic import atomic_directory

    src, out = Path(src), Path(out)
    original = _check_source(src)
    config = qwen2_config(original)
    chat = _is_chat_model(src)
    report = ConversionReport(source=str(src), fingerprint=fingerprint(src), chat=chat,
                              dropped=dropped_features(original))
    for feature in report.dropped:
        log.warning("dropped: %s", feature)
    tokenizer = qwen1_tokenizer(src / TIKTOKEN_FILE, chat=chat, model_max_length=config.max_position_embeddings)
    shards = source_shards(src)
    with atomic_directory(out) as tmp:
        report.tensors, dtype = _convert_shards(shards, tmp, config)
        report.shards = len(shards)
        config.dtype = dtype
        config.eos_token_id = tokenizer.convert_tokens_to_ids(IM_END if chat else ENDOFTEXT)
        config.pad_token_id = tokenizer.pad_token_id
        config.save_pretrained(tmp)
        eos = [tokenizer.eos_token_id] + ([tokenizer.pad_token_id] if chat else [])
        GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        report.notes.append("sampling defaults of the original generation_config.json are not carried over")
        (tmp / REPORT_FILE).write_text(json.dumps(asdict(report), indent=2), encoding="utf-8")
    return report


def default_cache_dir() -> Path:
    """Where `native_llm_path` keeps converted models: $VLMFORGE_CACHE/converted, else ~/.cache/vlmforge/converted."""
    return Path(os.environ.get("VLMFORGE_CACHE") or Path.home() / ".cache" / "vlmforge") / "converted"


def native_llm_path(path: str, cache_dir: str | Path | None = None) -> str:
    """`path` itself, or for a first-generation Qwen folder the path of its (cached) Qwen2 conversion.

    The conversion is reused while the source's files are unchanged (same fingerprint), so a second
    `vlmforge build` with the same `--llm` does not convert again.
    """
    if not is_qwen1_folder(path):
        return path
    src = Path(path)
    _check_source(src)
    identity = fingerprint(src)
    target = Path(cache_dir or default_cache_dir()) / f"{src.resolve().name}-qwen2-{identity}"
    if (target / REPORT_FILE).is_file() and read_json(target / REPORT_FILE).get("fingerprint") == identity:
        log.info("%s is a first-generation Qwen model: using its Qwen2 conversion in %s", path, target)
        return str(target)
    log.info("%s is a first-generation Qwen model: converting it to Qwen2 in %s", path, target)
    convert_qwen1(src, target)
    return str(target)
