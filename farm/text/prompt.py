"""ComfyUI's prompt syntax: emphasis weights and `embedding:` references.

Weights follow ComfyUI's CLIPTextEncode (not A1111's): `(x)` multiplies the weight of the
text inside by 1.1 (nesting multiplies again), `(x:1.3)` sets it to 1.3 outright,
`\\(` and `\\)` are literal parentheses, and `[x]` means nothing special. Unbalanced
parentheses are not an error: whatever ComfyUI's scanner makes of them, so do we (an
unclosed `(` stays literal text; a stray `)` turns the rest of the prompt into literal text).

Textual-inversion embeddings are not supported: farm loads none, so every `embedding:name`
is treated the way ComfyUI treats a name it cannot find in its embeddings folder — the
name is dropped (with a warning) and the words after it are kept.
"""
from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

EMPHASIS = 1.1  # what one pair of bare parentheses multiplies the weight by
EMBEDDING_PREFIX = "embedding:"


class _Paren:
    """A structural parenthesis; escaped ones are plain one-character strings instead."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


OPEN, CLOSE = _Paren("("), _Paren(")")
Symbol = str | _Paren  # one character of the prompt, or a structural parenthesis


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) segments, in order, as ComfyUI weighs them.

    Whitespace-only segments are kept (they tokenize to nothing); empty ones never appear.
    """
    out: list[tuple[str, float]] = []
    _weigh(_lex(text), 1.0, out)
    return out


def _lex(text: str) -> list[Symbol]:
    # A backslash escapes only a parenthesis; any other backslash is ordinary text.
    symbols: list[Symbol] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and text[i + 1 : i + 2] in ("(", ")"):
            symbols.append(text[i + 1])
            i += 2
            continue
        symbols.append(OPEN if ch == "(" else CLOSE if ch == ")" else ch)
        i += 1
    return symbols


def _top_level(symbols: list[Symbol]) -> list[list[Symbol]]:
    """Cut symbols into runs of text and outermost parenthesised groups.

    Depth is a plain counter that a stray `)` drives below zero; while it is negative
    nothing can open a group, which is how ComfyUI's scanner behaves.
    """
    items: list[list[Symbol]] = []
    current: list[Symbol] = []
    depth = 0
    for sym in symbols:
        if sym is OPEN:
            if depth == 0 and current:
                items.append(current)
                current = []
            current.append(sym)
            depth += 1
        elif sym is CLOSE:
            depth -= 1
            current.append(sym)
            if depth == 0:
                items.append(current)
                current = []
        else:
            current.append(sym)
    if current:
        items.append(current)
    return items


def _weigh(symbols: list[Symbol], weight: float, out: list[tuple[str, float]]) -> None:
    for item in _top_level(symbols):
        if len(item) < 2 or item[0] is not OPEN or item[-1] is not CLOSE:
            out.append(("".join(s.text if isinstance(s, _Paren) else s for s in item), weight))
            continue
        inner = item[1:-1]
        inner_weight = weight * EMPHASIS
        colon = _last_colon(inner)
        if colon > 0:  # a colon in first place is text: `(:1.2)` is emphasis of ":1.2"
            explicit = _as_weight(inner[colon + 1 :])
            if explicit is not None:
                inner_weight, inner = explicit, inner[:colon]
        _weigh(inner, inner_weight, out)


def _last_colon(symbols: list[Symbol]) -> int:
    for i in range(len(symbols) - 1, -1, -1):
        if symbols[i] == ":":
            return i
    return -1


def _as_weight(symbols: list[Symbol]) -> float | None:
    # Python's float() decides what a number is (" 1.5 ", "1e-1", "inf" all count),
    # because that is what ComfyUI uses; a parenthesis anywhere means "not a weight".
    if any(isinstance(s, _Paren) for s in symbols):
        return None
    try:
        return float("".join(symbols))  # type: ignore[arg-type]
    except ValueError:
        return None


_EMBEDDING_BREAK = re.compile(r"[ \n]" + re.escape(EMBEDDING_PREFIX))


def text_pieces(segment: str) -> list[str]:
    """The pieces of one weighted segment that get tokenized, each as one unit.

    ComfyUI cuts a segment before every `embedding:` that follows a space or newline; the
    cut changes which tokens stay together when a prompt spills into a second chunk.
    The missing embedding's name is dropped and the rest of its piece is kept.
    """
    first, *rest = _EMBEDDING_BREAK.split(segment)
    pieces = [first] + [EMBEDDING_PREFIX + r for r in rest]
    kept = []
    for piece in pieces:
        if piece.startswith(EMBEDDING_PREFIX):
            piece = _without_embedding(piece[len(EMBEDDING_PREFIX) :].strip("\n"))
        if piece:
            kept.append(piece)
    return kept


def _without_embedding(reference: str) -> str:
    """What is left of `embedding:<reference>` once the (unavailable) embedding is dropped.

    The name ends at the first whitespace; trailing commas glued to it (`name,`) are not
    part of the name and stay in the text, as in ComfyUI.
    """
    words = reference.split()
    if not words:  # a bare "embedding:" names nothing
        return ""
    name, leftover = words[0], " ".join(words[1:])
    stripped = name.strip(",")
    if len(stripped) < len(name):
        leftover = f"{name[len(stripped):]} {leftover}"
    log.warning("embedding:%s is not supported by farm (no textual inversion); it is ignored", name)
    return leftover
