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


def word_clip_tokenizer(words: list[str], model_max_length: int = 16) -> Any:
    """A CLIP (BPE) tokenizer whose merges make each of ``words`` one token; other text falls back to bytes.

    The trained tiny pipelines use it, so a caption is a handful of tokens the denoiser learns to read.

    Examples:
        >>> from sdopt.simulation.tokenizers import word_clip_tokenizer
        >>> tokenizer = word_clip_tokenizer(["red", "circle"])
        >>> tokenizer.convert_ids_to_tokens(tokenizer("a red circle").input_ids)[1:-1]
        ['a</w>', 'red</w>', 'circle</w>']
    """
    from transformers import CLIPTokenizer

    characters = _byte_characters()
    tokens = characters + [c + "</w>" for c in characters]
    merges: list[tuple[str, str]] = []
    # Longest words first: their merge chains rank above any shorter word's, so no chain is cut short.
    for word in sorted(set(words), key=lambda w: (-len(w), w)):
        parts = [*word[:-1], word[-1] + "</w>"]
        joined = parts[0]
        for part in parts[1:]:
            if (joined, part) not in merges:
                merges.append((joined, part))
            joined += part
            if joined not in tokens:
                tokens.append(joined)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    pairs: Any = merges  # the fast tokenizer takes pairs (its annotation says strings, which it refuses here)
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=model_max_length)


def word_t5_tokenizer(words: list[str], model_max_length: int = 16) -> Any:
    """A T5 (unigram) tokenizer with a piece per word of ``words``; other text falls back to characters.

    Examples:
        >>> from sdopt.simulation.tokenizers import word_t5_tokenizer
        >>> tokenizer = word_t5_tokenizer(["a", "red", "circle"])
        >>> tokenizer.convert_ids_to_tokens(tokenizer("a red circle").input_ids)
        ['▁a', '▁red', '▁circle', '</s>']
    """
    from transformers import T5Tokenizer

    whole = [("▁" + word, -1.0) for word in sorted(set(words))]  # beats any split into characters
    taken = {piece for piece, _ in whole}
    pieces = ["<pad>", "</s>", "<unk>", "▁"]
    pieces += [chr(code) for code in range(ord("!"), ord("~") + 1)]
    pieces += ["▁" + chr(code) for code in range(ord("a"), ord("z") + 1)]
    vocab = [(piece, 0.0 if index < 3 else -float(index)) for index, piece in enumerate(pieces) if piece not in taken]
    return T5Tokenizer(vocab=vocab + whole, extra_ids=0, model_max_length=model_max_length)
