"""ComfyUI prompt syntax: emphasis weights, escapes, unbalanced parentheses, embeddings.

Expected values are worked out by hand from ComfyUI's rules: `(x)` multiplies by 1.1,
`(x:w)` sets w, the last colon of a group decides, a colon in first place is text.
"""
import pytest

from farm.text.prompt import parse_weights, text_pieces

E = 1.1

WEIGHT_TABLE = [
    ("a cat", [("a cat", 1.0)]),
    ("", []),
    ("(a cat)", [("a cat", E)]),
    ("((cat))", [("cat", 1.0 * E * E)]),
    ("(((cat)))", [("cat", 1.0 * E * E * E)]),
    ("(cat:1.5)", [("cat", 1.5)]),
    ("(cat:0)", [("cat", 0.0)]),
    ("(cat:-0.5)", [("cat", -0.5)]),
    ("(cat: 1.5 )", [("cat", 1.5)]),
    ("(cat:1e-1)", [("cat", 0.1)]),
    ("a (b:0.5) c", [("a ", 1.0), ("b", 0.5), (" c", 1.0)]),
    ("(a)(b)", [("a", E), ("b", E)]),
    # explicit weights replace, they do not multiply; bare parentheses around them multiply
    ("((a:2))", [("a", 2.0)]),
    ("((a):2)", [("a", 2.0 * E)]),
    ("((cat:1.5) dog)", [("cat", 1.5), (" dog", E)]),
    ("(red (cat:1.5) dog:0.8)", [("red ", 0.8), ("cat", 1.5), (" dog", 0.8)]),
    # the last colon decides; a non-number after it leaves the colon as text
    ("(cat:1.5:2)", [("cat:1.5", 2.0)]),
    ("(cat:abc)", [("cat:abc", E)]),
    ("(:1.5)", [(":1.5", E)]),
    ("(time: 10:30)", [("time: 10", 30.0)]),
    ("()", []),
    ("a () b", [("a ", 1.0), (" b", 1.0)]),
    # escapes: literal parentheses, never structure
    (r"\(cat\)", [("(cat)", 1.0)]),
    (r"(a \(b\))", [("a (b)", E)]),
    (r"(a \(b:1.3\))", [("a (b:1.3)", E)]),
    (r"\(cat:1.5\)", [("(cat:1.5)", 1.0)]),
    (r"back\slash", [(r"back\slash", 1.0)]),
    # unbalanced
    ("(a b", [("(a b", 1.0)]),
    ("a (b", [("a ", 1.0), ("(b", 1.0)]),
    ("((a)", [("(a", E)]),
    ("(a (b:1.5)", [("a ", 1.5), ("(b", 1.5)]),
    ("a) (b)", [("a) (b)", 1.0)]),
    ("(a)) (b)", [("a", E), (") (b)", 1.0)]),
    ("[a] {b}", [("[a] {b}", 1.0)]),
]


@pytest.mark.parametrize("text,expected", WEIGHT_TABLE, ids=[t or "<empty>" for t, _ in WEIGHT_TABLE])
def test_parse_weights(text, expected):
    assert parse_weights(text) == expected


def test_parse_weights_multiplies_exactly_like_repeated_float_products():
    # 1.1 * 1.1 is not 1.21 in floating point; ComfyUI multiplies level by level, so do we.
    (_, w), = parse_weights("((x))")
    assert w == 1.1 * 1.1 != 1.21


@pytest.mark.parametrize("segment,expected", [
    ("a photo of a cat", ["a photo of a cat"]),
    ("a photo embedding:foo cat", ["a photo", "cat"]),
    ("embedding:foo", []),
    ("embedding:foo, cat", [", cat"]),
    ("a\nembedding:foo\nx", ["a", "x"]),
    ("a embedding:", ["a"]),
    # only after a space or newline (or at the very start) is it a reference
    ("a,embedding:foo", ["a,embedding:foo"]),
    ("Embedding:foo", ["Embedding:foo"]),
    ("", []),
])
def test_text_pieces_drop_unavailable_embeddings(segment, expected):
    assert text_pieces(segment) == expected
