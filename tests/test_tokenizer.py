import json
import random
import time
from pathlib import Path

import pytest

from photofield_ai.clip.tokenizer import CONTEXT_LENGTH, MAX_CACHED_CHARS, ClipTokenizer
from tests.hostile import long_word

CASES = json.loads((Path(__file__).parent / "data" / "tokenizer-cases.json").read_text())


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer.from_package()


def test_vocabulary_is_clips(tokenizer: ClipTokenizer) -> None:
    assert len(tokenizer.encoder) == 49408
    assert (tokenizer.sot, tokenizer.eot) == (CASES["sot"], CASES["eot"])


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: repr(c["text"][:30]))
def test_ids_equal_reference(tokenizer: ClipTokenizer, case: dict[str, object]) -> None:
    text, expected = case["text"], case["ids"]
    assert isinstance(text, str) and isinstance(expected, list)
    assert [tokenizer.sot, *tokenizer.encode(text), tokenizer.eot] == expected
    tokens = tokenizer.tokenize(text).tolist()
    assert len(tokens) == CONTEXT_LENGTH
    if len(expected) <= CONTEXT_LENGTH:
        assert tokens == expected + [0] * (CONTEXT_LENGTH - len(expected))
    else:  # cut to the context with the end token last, never an error
        assert tokens == [*expected[: CONTEXT_LENGTH - 1], CASES["eot"]]


def test_huge_text_is_truncated_to_the_context(tokenizer: ClipTokenizer) -> None:
    text = "a photo of a very large dog " * 4000  # ~112 kB
    tokens = tokenizer.tokenize(text).tolist()
    assert len(tokens) == CONTEXT_LENGTH
    assert tokens[0] == tokenizer.sot and tokens[-1] == tokenizer.eot
    # Stopping the BPE pass early gives exactly the prefix of the full encoding.
    assert tokens[1:-1] == tokenizer.encode(text)[: CONTEXT_LENGTH - 2]
    assert tokenizer.encode(text, max_ids=10) == tokenizer.encode(text)[:10]


def _reference_ids(tokenizer: ClipTokenizer, word: str) -> list[int]:
    """Ids of one lower-case word by a full BPE pass over all of it (the reference's way)."""
    mapped = "".join(tokenizer.byte_encoder[b] for b in word.encode("utf-8"))
    return [tokenizer.encoder[piece] for piece in tokenizer.bpe(mapped).split(" ")]


@pytest.mark.parametrize(
    ("length", "alphabet"), [(700, "abcdefghijklmnopqrstuvwxyz"), (900, "aeiou"), (1200, "ab")]
)
def test_long_words_are_encoded_from_a_prefix_with_the_same_ids(
    tokenizer: ClipTokenizer, length: int, alphabet: str
) -> None:
    """A word longer than WORD_CHUNK is BPE'd from a prefix (BPE is quadratic in a word's
    length); the ids that reach the model equal those of a full pass."""
    rng = random.Random(length)
    word = "".join(rng.choice(alphabet) for _ in range(length))
    expected = _reference_ids(tokenizer, word)[: CONTEXT_LENGTH - 2]
    assert tokenizer.tokenize(word).tolist()[1 : len(expected) + 1] == expected


def test_a_20_kb_word_is_cheap_and_not_cached(tokenizer: ClipTokenizer) -> None:
    started = time.perf_counter()
    tokens = tokenizer.tokenize(long_word(20_000))
    elapsed = time.perf_counter() - started
    assert (tokens > 0).sum() == CONTEXT_LENGTH
    assert elapsed < 1.0, f"{elapsed:.2f} s (a full BPE pass over 20 kB takes ~20 s)"
    assert max(len(k) for k in tokenizer._cache) <= MAX_CACHED_CHARS


def test_cases_file_is_the_golden_copy() -> None:
    """tests/data/README.md: the cases come from the reference tokenizer, unchanged."""
    import hashlib

    digest = hashlib.sha256((Path(__file__).parent / "data" / "tokenizer-cases.json").read_bytes())
    assert digest.hexdigest() == "5f9eb98c000c0c78bacc0a76417581cb559c950aeba8ef2dc653d73ad59db8c3"
