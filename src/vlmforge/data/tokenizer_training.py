"""Train a small byte-level BPE tokenizer from text, with a chat template, as a transformers tokenizer.

Used by the from-scratch demo and by tests (which need a real tokenizer without a download).
Byte-level BPE covers any UTF-8 text, so Chinese works even with a tiny vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable

from vlmforge.data.chat_templates import (
    CHATML_SPECIAL_TOKENS,
    CHATML_TEMPLATE,
    LLAMA3_SPECIAL_TOKENS,
    LLAMA3_TEMPLATE,
    multimodal_chat_template,
)

TEMPLATE_STYLES = {
    "chatml": (CHATML_TEMPLATE, CHATML_SPECIAL_TOKENS, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "llama3": (
        LLAMA3_TEMPLATE,
        LLAMA3_SPECIAL_TOKENS,
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|end_of_text|>"},
    ),
}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512, style: str = "chatml"):
    """Train a byte-level BPE tokenizer on `texts`; returns a `PreTrainedTokenizerFast` with a chat template.

    `style` picks the chat format and special tokens: "chatml" (Qwen2) or "llama3".
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    template, special_tokens, special_map = TEMPLATE_STYLES[style]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **special_map)
    tokenizer.chat_template = multimodal_chat_template(template)
    return tokenizer
