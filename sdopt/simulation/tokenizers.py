"""Tokenizers built in memory, so tiny pipelines need no files."""

from __future__ import annotations

from typing import Any


def _byte_characters() -> list[str]:
    """The 256 printable characters GPT-2-style byte-level BPE maps bytes to."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def tiny_clip_tokenizer(model_max_length: int = 77) -> Any:
    """A byte-level CLIP tokenizer built in memory (no merges: one token per byte)."""
    from transformers import CLIPTokenizer

    characters = _byte_characters()
    tokens = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_t5_tokenizer(model_max_length: int = 32) -> Any:
    """A character-level T5 (unigram) tokenizer built in memory."""
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "▁"]
    pieces += [chr(code) for code in range(ord("!"), ord("~") + 1)]
    pieces += ["▁" + chr(code) for code in range(ord("a"), ord("z") + 1)]
    vocab = [(piece, 0.0 if index < 3 else -float(index)) for index, piece in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def tiny_gemma_tokenizer(model_max_length: int = 64) -> Any:
    """A byte-level Gemma (BPE) tokenizer built in memory, for Gemma-encoded pipelines (Sana, Lumina 2)."""
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    characters = ["▁", *[chr(code) for code in range(ord("!"), ord("~") + 1)]]
    vocab = {token: index for index, token in enumerate([*specials, *characters])}
    return GemmaTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_bert_tokenizer(model_max_length: int = 77) -> Any:
    """A character-level BERT (WordPiece) tokenizer built in memory, for HunyuanDiT."""
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[chr(code) for code in range(ord("!"), ord("~") + 1)]]
    vocab = {token: index for index, token in enumerate(tokens)}
    return BertTokenizer(vocab=vocab, model_max_length=model_max_length)
