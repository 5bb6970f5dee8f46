"""CLIP's byte-pair-encoding tokenizer, id-for-id compatible with OpenAI's reference.

The reference cleans text with ftfy and html.unescape and splits it with a \\p{L}/\\p{N} pattern;
both are kept exactly (via the `ftfy` and `regex` packages) because a different id for the same
query gives a different embedding and so different search results than the original service.
"""

from __future__ import annotations

import gzip
import html
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources

import ftfy
import numpy as np
import numpy.typing as npt
import regex

CONTEXT_LENGTH = 77
# Bounds on the work one text can cause (BPE is quadratic in a word's length). Normal text never
# reaches them, so its ids are exactly the reference's:
# - a text longer than MAX_TEXT_CHARS has its first 8 × MAX_TEXT_CHARS characters' whitespace
#   runs folded and is cut to MAX_TEXT_CHARS before ftfy (77 tokens of at most 32 characters
#   need ~2,500 characters of clean text; the rest is margin for HTML entities, which shrink);
# - a word longer than WORD_CHUNK characters is encoded from a prefix, doubled until the prefix
#   yields the ids still needed plus BOUNDARY_MARGIN (the last pieces of a cut word may merge
#   differently than in the whole word; they are never used);
# - pieces longer than MAX_CACHED_CHARS are not cached (the cache is bounded by entries).
MAX_TEXT_CHARS = 16_384
WORD_CHUNK = 256
BOUNDARY_MARGIN = 8
MAX_CACHED_CHARS = 64
_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte → printable-character map GPT-2 and CLIP use for byte-level BPE."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _pairs(word: Sequence[str]) -> set[tuple[str, str]]:
    return {(word[i], word[i + 1]) for i in range(len(word) - 1)}


def clean_text(text: str) -> str:
    """Reference CLIP cleaning: ftfy, double html unescape, whitespace folding, lower case.
    A text over MAX_TEXT_CHARS is folded and cut first (see above)."""
    if len(text) > MAX_TEXT_CHARS:
        text = _WHITESPACE.sub(" ", text[: 8 * MAX_TEXT_CHARS])[:MAX_TEXT_CHARS]
    text = str(ftfy.fix_text(text))
    text = html.unescape(html.unescape(text)).strip()
    folded: str = _WHITESPACE.sub(" ", text)
    return folded.strip().lower()


class ClipTokenizer:
    """Turns text into CLIP token ids. Thread-safe: the only mutable state is a memo cache."""

    def __init__(self, merges: Iterable[str]) -> None:
        self.byte_encoder = _bytes_to_unicode()
        merge_pairs = [tuple(m.split()) for m in merges]
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(pair) for pair in merge_pairs]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks = {pair: i for i, pair in enumerate(merge_pairs)}
        self.sot = self.encoder["<|startoftext|>"]
        self.eot = self.encoder["<|endoftext|>"]
        self._cache: dict[str, str] = {
            "<|startoftext|>": "<|startoftext|>",
            "<|endoftext|>": "<|endoftext|>",
        }

    @classmethod
    def from_package(cls) -> ClipTokenizer:
        """The tokenizer with the vocabulary shipped as package data (49408 tokens)."""
        return _packaged_tokenizer()

    def bpe(self, token: str) -> str:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word: list[str] = [*token[:-1], token[-1] + "</w>"]
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = new_word
            if len(word) == 1:
                break
            pairs = _pairs(word)
        result = " ".join(word)
        if len(self._cache) < 100_000 and len(token) <= MAX_CACHED_CHARS:
            self._cache[token] = result
        return result

    def _pieces(self, mapped: str, needed: int) -> list[str]:
        """The BPE pieces of one pre-token, at least the first `needed` of them exactly."""
        if len(mapped) <= WORD_CHUNK:
            return self.bpe(mapped).split(" ")
        chunk = WORD_CHUNK
        while True:
            pieces = self.bpe(mapped[:chunk]).split(" ")
            if chunk >= len(mapped):
                return pieces
            if len(pieces) >= needed + BOUNDARY_MARGIN:
                return pieces[:needed]
            chunk *= 2

    def encode(self, text: str, max_ids: int | None = None) -> list[int]:
        """Token ids of `text` without start/end tokens, exactly as the reference `encode`.

        With `max_ids`, stops once that many ids are known: ids past the context are cut anyway,
        and a 100 kB query should not cost a full BPE pass.
        """
        ids: list[int] = []
        for match in _PATTERN.finditer(clean_text(text)):
            mapped = "".join(self.byte_encoder[b] for b in match.group().encode("utf-8"))
            needed = max_ids - len(ids) if max_ids is not None else len(mapped)
            ids.extend(self.encoder[piece] for piece in self._pieces(mapped, needed))
            if max_ids is not None and len(ids) >= max_ids:
                return ids[:max_ids]
        return ids

    def tokenize(self, text: str, context_length: int = CONTEXT_LENGTH) -> npt.NDArray[np.int64]:
        """Start token, ids, end token, zero padded to the context.

        Longer queries are cut with the end token kept last rather than rejected: a search box
        should never fail because someone typed a paragraph. CLIP's text model pools the
        features at the end token, so it must be present.
        """
        ids = [self.sot, *self.encode(text, max_ids=context_length), self.eot]
        if len(ids) > context_length:
            ids = [*ids[: context_length - 1], self.eot]
        out = np.zeros(context_length, dtype=np.int64)
        out[: len(ids)] = ids
        return out


@lru_cache(maxsize=1)
def _packaged_tokenizer() -> ClipTokenizer:
    data = resources.files("photofield_ai.clip").joinpath(_VOCAB_FILE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    # The reference skips the "#version" header and keeps 49152 - 256 - 2 merges.
    merges = lines[1 : 49152 - 256 - 2 + 1]
    return ClipTokenizer(merges)
