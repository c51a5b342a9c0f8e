"""Tokenizers for training: a pretrained one with Loupe's ``<image>`` placeholder added, or a tiny
byte-level BPE trained offline on the training texts (``model.tokenizer: tiny``; tests and smoke runs).

Both are ``transformers`` fast tokenizers (``PreTrainedTokenizerFast``): offsets drive the label masks
and ``save_pretrained`` puts the tokenizer into every checkpoint, so a checkpoint loads on its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loupe.train.strategies.base import IMAGE_TOKEN

# Special tokens of the tiny tokenizer: Llama-2/Vicuna's and Llama-3's, so every template renders.
TINY_SPECIALS = [
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    IMAGE_TOKEN,
]


def build_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Any:
    """A byte-level BPE (``tokenizers``) trained on ``texts``; deterministic for the same texts.

    Digits are split one per token before the byte-level step (LLaMA's and Llama-2's SentencePiece
    ``split_digits``): a tiny model trained on a few hundred numbers learns ten digit tokens, not one
    merged token per number it happened to see."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=[t for t in TINY_SPECIALS if t not in ("<unk>", "<s>", "</s>", "<pad>")],
    )


def prepare_tokenizer(tok: Any) -> Any:
    """Add ``<image>`` as a special token and a pad token when missing (LLaVA pads with unk)."""
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_special_tokens(
            {"additional_special_tokens": [IMAGE_TOKEN]}, replace_additional_special_tokens=False
        )
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    if not getattr(tok, "is_fast", False):
        raise ValueError("model.tokenizer: a fast (Rust) tokenizer is required for label offsets")
    return tok


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(path)))
