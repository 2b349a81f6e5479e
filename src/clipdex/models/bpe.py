"""open_clip's CLIP tokenizer (`SimpleTokenizer`, byte-level BPE) without torch or open_clip.

open_clip's own tokenizer module imports torch at its top, so a text query that should not
import torch tokenizes here: the same vocabulary file (open_clip's
`bpe_simple_vocab_16e6.txt.gz`, found without importing open_clip), the same cleaning
(ftfy, HTML unescaping twice, whitespace folded, lower case), the same pattern and merges,
the same truncation (the last kept token becomes end-of-text). Token ids equal
open_clip's (tests/test_text_numpy.py pins them on unicode, punctuation, long and empty
texts).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clipdex.errors import ModelLoadError

#: The merges open_clip reads from the file (its `merges[1:49152-256-2+1]`).
MERGES = 49152 - 256 - 2
SPECIAL = ("<start_of_text>", "<end_of_text>")


def vocab_file() -> Path:
    """open_clip's BPE vocabulary file, located without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("open_clip is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise ModelLoadError(f"open_clip's tokenizer vocabulary is missing: {path}")
    return path


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Each byte as a printable character (open_clip's table)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


class BPETokenizer:
    """Texts to (N, context_length) int64 token ids, as open_clip's `tokenize`."""

    def __init__(self, path: Path | None = None):
        import regex

        with gzip.open(path or vocab_file()) as handle:
            lines = handle.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : MERGES + 1]]
        byte_chars = list(bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars]
        vocab += ["".join(merge) for merge in merges] + list(SPECIAL)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.cache = {token: token for token in SPECIAL}
        self.pattern = regex.compile(
            "|".join(SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.sot, self.eot = (self.encoder[token] for token in SPECIAL)

    def bpe(self, token: str) -> str:
        """One pre-token's BPE pieces, space-separated (open_clip's `bpe`)."""
        if token in self.cache:
            return self.cache[token]
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = set(itertools.pairwise(word))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        result = " ".join(word)
        self.cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        """A text's token ids, without start/end markers."""
        ids = []
        for piece in self.pattern.findall(clean(text)):
            chars = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[part] for part in self.bpe(chars).split(" "))
        return ids

    def __call__(self, texts: Sequence[str] | str, context_length: int = 77) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [self.sot, *self.encode(text), self.eot][:context_length]
            tokens[-1] = self.eot
            out[row, : len(tokens)] = tokens
        return out


def clean(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy, HTML unescaped twice, whitespace folded."""
    import html

    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


@functools.lru_cache(maxsize=1)
def tokenizer() -> BPETokenizer:
    """The process's tokenizer (reading the vocabulary is most of its cost)."""
    return BPETokenizer()
