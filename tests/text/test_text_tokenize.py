"""Chunking as ComfyUI does it: 77-token windows, whole short pieces, cut long ones.

Reference token ids are the well-known CLIP ids ("a photo of a cat" = 320 1125 539 320
2368) or come straight from the HF tokenizer, never from the code under test.
"""
import pytest

from farm.text.tokenize import (
    CHUNK_LENGTH,
    clip_g_tokenizer,
    clip_l_tokenizer,
    empty_chunk,
    tokenize_prompt,
)

S, E = 49406, 49407
CAT, DOG = 2368, 1929


@pytest.fixture(scope="module")
def tok_l():
    return clip_l_tokenizer()


@pytest.fixture(scope="module")
def tok_g():
    return clip_g_tokenizer()


def ids_of(tokenizer, text):
    full = tokenizer(text)["input_ids"]
    assert full[0] == S and full[-1] == E
    return full[1:-1]


def chunk(body, pad, weights=None):
    """A full 77-token chunk: start, body, end, padding."""
    ids = [S] + list(body) + [E]
    ids += [pad] * (CHUNK_LENGTH - len(ids))
    w = [1.0] + list(weights or [1.0] * len(body))
    return ids, w + [1.0] * (CHUNK_LENGTH - len(w))


def test_single_tokens_used_below(tok_l):
    assert ids_of(tok_l, "cat") == [CAT] and ids_of(tok_l, "dog") == [DOG]
    assert ids_of(tok_l, "cat " * 80) == [CAT] * 80


@pytest.mark.parametrize("which,pad", [("l", E), ("g", 0)])
def test_plain_prompt_pads_with_the_tokenizers_pad(tok_l, tok_g, which, pad):
    chunks = tokenize_prompt("a photo of a cat", tok_l if which == "l" else tok_g)
    assert len(chunks) == 1
    assert list(chunks[0].ids) == chunk([320, 1125, 539, 320, 2368], pad)[0]
    assert set(chunks[0].weights) == {1.0} and not chunks[0].has_weights


@pytest.mark.parametrize("text", ["", "   ", "()", "\n"])
def test_empty_prompt_is_one_blank_chunk(tok_l, tok_g, text):
    assert [c.ids for c in tokenize_prompt(text, tok_l)] == [tuple([S, E] + [E] * 75)]
    assert [c.ids for c in tokenize_prompt(text, tok_g)] == [tuple([S, E] + [0] * 75)]
    assert empty_chunk(tok_g).ids == tuple([S, E] + [0] * 75)


def test_80_tokens_make_two_chunks(tok_l):
    chunks = tokenize_prompt("cat " * 80, tok_l)
    assert [list(c.ids) for c in chunks] == [chunk([CAT] * 75, E)[0], chunk([CAT] * 5, E)[0]]


@pytest.mark.parametrize("n,expected_chunks", [(74, 1), (75, 1), (76, 2), (150, 2), (151, 3)])
def test_chunk_count(tok_l, n, expected_chunks):
    chunks = tokenize_prompt("cat " * n, tok_l)
    assert len(chunks) == expected_chunks
    assert all(len(c.ids) == CHUNK_LENGTH for c in chunks)
    assert sum(c.ids.count(CAT) for c in chunks) == n


def test_short_piece_that_does_not_fit_moves_whole(tok_l):
    rgb = ids_of(tok_l, "red green blue")
    assert len(rgb) == 3
    chunks = tokenize_prompt("cat " * 73 + "(red green blue:1.2)", tok_l)
    assert [list(c.ids) for c in chunks] == [chunk([CAT] * 73, E)[0], chunk(rgb, E)[0]]
    assert list(chunks[1].weights) == chunk(rgb, E, [1.2] * 3)[1]


@pytest.mark.parametrize("n_dogs,moves_whole", [(7, True), (8, False), (10, False)])
def test_long_piece_is_cut_at_the_boundary(tok_l, n_dogs, moves_whole):
    # 73 cats leave room for 2 more tokens; a piece of 8+ tokens fills them.
    chunks = tokenize_prompt("cat " * 73 + "(" + "dog " * n_dogs + ":1.2)", tok_l)
    if moves_whole:
        expected = [chunk([CAT] * 73, E), chunk([DOG] * n_dogs, E, [1.2] * n_dogs)]
    else:
        expected = [chunk([CAT] * 73 + [DOG] * 2, E, [1.0] * 73 + [1.2] * 2),
                    chunk([DOG] * (n_dogs - 2), E, [1.2] * (n_dogs - 2))]
    assert [(list(c.ids), list(c.weights)) for c in chunks] == expected


def test_each_token_carries_its_segment_weight(tok_l):
    (c,) = tokenize_prompt("a (cat:1.3) ((dog))", tok_l)
    assert list(c.ids[:5]) == [S, 320, CAT, DOG, E]
    assert list(c.weights[:5]) == [1.0, 1.0, 1.3, 1.1 * 1.1, 1.0]
    assert c.has_weights
    assert c.pairs()[2] == (CAT, 1.3)


def test_escaped_parentheses_are_tokenized_as_text(tok_l):
    (c,) = tokenize_prompt(r"\(cat\)", tok_l)
    assert list(c.ids) == chunk(ids_of(tok_l, "(cat)"), E)[0] and not c.has_weights


def test_unavailable_embedding_is_dropped_and_splits_pieces(tok_l):
    (c,) = tokenize_prompt("a photo embedding:foo, cat", tok_l)
    assert list(c.ids) == chunk(ids_of(tok_l, "a photo , cat"), E)[0]
    # The text after the reference is its own piece: short, so it moves whole instead of
    # being cut the way one 76-token piece would be.
    chunks = tokenize_prompt("cat " * 73 + "embedding:x red green blue", tok_l)
    assert [list(c.ids) for c in chunks] == [chunk([CAT] * 73, E)[0], chunk(ids_of(tok_l, "red green blue"), E)[0]]

