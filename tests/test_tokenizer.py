import json
from pathlib import Path

import pytest

from photofield_ai.clip.tokenizer import CONTEXT_LENGTH, ClipTokenizer

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


def test_some_case_is_longer_than_the_context() -> None:
    assert any(len(c["ids"]) > CONTEXT_LENGTH for c in CASES["cases"])


def test_huge_text_is_truncated_to_the_context(tokenizer: ClipTokenizer) -> None:
    text = "a photo of a very large dog " * 4000  # ~112 kB
    tokens = tokenizer.tokenize(text).tolist()
    assert len(tokens) == CONTEXT_LENGTH
    assert tokens[0] == tokenizer.sot and tokens[-1] == tokenizer.eot
    # Stopping the BPE pass early gives exactly the prefix of the full encoding.
    assert tokens[1:-1] == tokenizer.encode(text)[: CONTEXT_LENGTH - 2]
    assert tokenizer.encode(text, max_ids=10) == tokenizer.encode(text)[:10]
