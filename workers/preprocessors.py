"""The tokenizers and image preprocessing of the small CLIPs and GITs that the local presets build or train.

Their vocabularies are fixed word lists rather than trained at build time, because a trained tokenizer
gets different ids on every run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import pre_tokenizers
from transformers import BertTokenizer, CLIPImageProcessorPil, CLIPTokenizer, GitProcessor

# Every printable ASCII character is a piece too, so no text maps to unknown tokens.
PRINTABLE_CHARS: tuple[str, ...] = tuple(chr(code) for code in range(33, 127))
_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def clip_tokenizer(words: Iterable[str], *, max_tokens: int) -> CLIPTokenizer:
    """Byte-level BPE as in CLIP, whose merges spell out `words`, in their order (which fixes the ids)."""
    # Single bytes and their end-of-word forms cover any text; merges that spell out each word left to
    # right make the words a few tokens each (merges of different words compete, so not always one).
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [*alphabet, *(f"{char}</w>" for char in alphabet)]
    merges: list[tuple[str, str]] = []
    for word in words:
        symbols = [*word[:-1], f"{word[-1]}</w>"]
        merged = symbols[0]
        for symbol in symbols[1:]:
            merges.append((merged, symbol))
            merged += symbol
            tokens.append(merged)
    merges = list(dict.fromkeys(merges))
    tokens = [*dict.fromkeys(tokens), "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    # The hint says strings, but the tokenizers backend wants merges as pairs.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_tokens)  # type: ignore[arg-type]


def wordpiece_vocabulary(words: Iterable[str]) -> list[str]:
    """BERT's specials, `words` in their order, then single characters and their "##" continuations."""
    # Lower case only, as the tokenizer lowercases its input; "##" pieces spell out any other word.
    chars = [char for char in PRINTABLE_CHARS if not char.isupper()]
    pieces = [*_BERT_SPECIALS, *words, *chars, *(f"##{char}" for char in chars if char.isalnum())]
    return list(dict.fromkeys(pieces))


def git_processor(folder: Path, vocabulary: list[str], *, image_size: int, max_tokens: int) -> GitProcessor:
    """GIT-base's processor, shrunk: CLIP's image preprocessing and a BERT WordPiece tokenizer over `vocabulary`.

    The vocabulary is a file, as the hub's is: it is written to `folder`/vocab.txt.
    """
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocabulary) + "\n")
    tokenizer = BertTokenizer(vocab=str(vocab_file), model_max_length=max_tokens)
    return GitProcessor(image_processor=clip_image_processor(image_size), tokenizer=tokenizer)


def clip_image_processor(size: int) -> CLIPImageProcessorPil:
    """CLIP's preprocessing at `size` px: the short side scaled to it, a centre crop, CLIP's normalization."""
    # The PIL backend by name: `CLIPImageProcessor` means the torchvision one where torchvision is
    # installed, and the saved config would then differ from machine to machine.
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
