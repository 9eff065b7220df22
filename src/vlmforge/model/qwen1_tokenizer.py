"""The first-generation Qwen tokenizer (`qwen.tiktoken`) as a `tokenizers` BPE tokenizer.

Qwen-7B ships its vocabulary as a tiktoken file (one `base64(token) rank` per line) and a Python
tokenizer class that only loads with remote code. The same vocabulary is a byte-level BPE: merges
are derived from the ranks by transformers' own `TikTokenConverter`; we add Qwen's pre-tokenizer
regex, NFC normalisation (Qwen's tokenizer normalises every text to NFC before encoding), its 208
special tokens (ids right after the BPE ranks, 151643.. for the real file) and Qwen-7B-Chat's
ChatML chat template. The result is a plain `PreTrainedTokenizerFast` folder that `AutoTokenizer`
loads alone. tiktoken itself is not needed: the file format is read here.

    tokenizer = qwen1_tokenizer("Qwen-7B-Chat/qwen.tiktoken", chat=True)
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from vlmforge.errors import ModelError

# Qwen's pre-tokenizer: like cl100k's, but digits are split one by one (`\p{N}`, not `\p{N}{1,3}`).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END] + [f"<|extra_{i}|>" for i in range(205)]
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen-7B-Chat's `make_context` (chat_format "chatml") and its fine-tuning script: a system turn
# always comes first, the default one when the conversation has none; every turn is
# `<|im_start|>role\ncontent<|im_end|>` followed by a newline; generation starts after
# `<|im_start|>assistant\n`.
QWEN1_CHAT_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def read_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """`{token bytes: rank}` of a `.tiktoken` file; `ModelError` on a malformed line."""
    ranks = {}
    for number, line in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise ModelError(f"{path}:{number} is not a 'base64-token rank' line of a tiktoken file") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ModelError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps; not a Qwen tiktoken vocabulary")
    if len(ranks) < 256 or any(bytes([b]) not in ranks for b in range(256)):
        raise ModelError(f"{path}: not a byte-level vocabulary (some of the 256 single bytes are missing)")
    return ranks


def _converter(tiktoken_path: Path):
    """transformers' TikTokenConverter, reading the file with `read_tiktoken_ranks` instead of tiktoken."""
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class QwenTikTokenConverter(TikTokenConverter):
        load_tiktoken_bpe = staticmethod(read_tiktoken_ranks)

        def converted(self):
            tokenizer = super().converted()
            tokenizer.normalizer = normalizers.NFC()  # Qwen's tokenizer NFC-normalises before encoding
            return tokenizer

    return QwenTikTokenConverter(
        vocab_file=str(tiktoken_path), pattern=QWEN_PATTERN, extra_special_tokens=SPECIAL_TOKENS
    )


def qwen1_tokenizer(tiktoken_path: str | Path, chat: bool = True, model_max_length: int = 8192):
    """A `PreTrainedTokenizerFast` equal to Qwen's tiktoken tokenizer, with the ChatML chat template.

    `chat` picks the end-of-sequence token: `<|im_end|>` for the chat model (it ends every turn),
    `<|endoftext|>` for the base model. Padding uses `<|endoftext|>`, as Qwen's generation config does.
    """
    from transformers import PreTrainedTokenizerFast

    tiktoken_path = Path(tiktoken_path)
    if not tiktoken_path.is_file():
        raise ModelError(f"{tiktoken_path} not found: a first-generation Qwen folder carries its vocabulary there")
    backend = _converter(tiktoken_path).converted()
    num_ranks = backend.get_vocab_size(with_added_tokens=False)
    if backend.token_to_id(ENDOFTEXT) != num_ranks:
        raise ModelError(f"{tiktoken_path}: special tokens would not follow the BPE ranks; the vocabulary is not Qwen's")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END if chat else ENDOFTEXT,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        extra_special_tokens=[token for token in SPECIAL_TOKENS if token not in (ENDOFTEXT, IM_END)],
        chat_template=QWEN1_CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
