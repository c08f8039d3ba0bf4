"""Prompt -> CLIP token chunks, the way ComfyUI's CLIPTextEncode cuts a long prompt.

A prompt of any length becomes one or more chunks of 77 tokens: start token, up to 75
prompt tokens, end token, padding. Each tokenized piece of the prompt (a weighted
segment, see prompt.py) is kept in one chunk when it fits; a piece that does not fit
moves whole to the next chunk, unless it is long (8 tokens or more), in which case it is
cut at the chunk boundary. Every token carries the weight of its segment; start, end and
padding tokens weigh 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import CLIPTokenizer

from farm.errors import InvalidInputError
from farm.text.prompt import parse_weights, text_pieces

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "models" / "tokenizer"
CHUNK_LENGTH = 77  # CLIP's context: start + 75 prompt tokens + end
LONG_PIECE_TOKENS = 8  # a piece this long may be cut across two chunks


def clip_l_tokenizer() -> CLIPTokenizer:
    """The CLIP ViT-L tokenizer of SD1.x and SDXL's first encoder: pads with <|endoftext|>."""
    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"),
                         model_max_length=CHUNK_LENGTH)


def clip_g_tokenizer() -> CLIPTokenizer:
    """SDXL's OpenCLIP bigG tokenizer: the same vocabulary, but pads with "!" (id 0)."""
    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"),
                         pad_token="!", model_max_length=CHUNK_LENGTH)


@dataclass(frozen=True)
class TokenChunk:
    """One 77-token CLIP input window; ids[i] is encoded with emphasis weights[i]."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        assert len(self.ids) == len(self.weights) == CHUNK_LENGTH, (len(self.ids), len(self.weights))

    @property
    def has_weights(self) -> bool:
        return any(w != 1.0 for w in self.weights)

    def pairs(self) -> list[tuple[int, float]]:
        return list(zip(self.ids, self.weights))


@dataclass(frozen=True)
class _SpecialIds:
    start: int
    end: int
    pad: int

    @classmethod
    def of(cls, tokenizer: CLIPTokenizer) -> _SpecialIds:
        ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        if None in ids:
            raise InvalidInputError("the CLIP tokenizer lacks a start, end or pad token; build it with "
                             "farm.text.clip_l_tokenizer() or clip_g_tokenizer()")
        return cls(*ids)


@dataclass(frozen=True)
class _Piece:
    """Tokens that ComfyUI keeps together when it can; they share one weight."""

    ids: tuple[int, ...]
    weight: float


def tokenize_prompt(text: str, tokenizer: CLIPTokenizer) -> list[TokenChunk]:
    """Tokenize a prompt (ComfyUI syntax) into weighted chunks; never fewer than one."""
    pieces = [(piece, weight) for segment, weight in parse_weights(text) for piece in text_pieces(segment)]
    if not pieces:
        return [empty_chunk(tokenizer)]
    # Batched: one call into the tokenizer for all pieces. add_special_tokens=False gives
    # what ComfyUI gets by cutting the start and end tokens off each piece's encoding.
    encoded = tokenizer([p for p, _ in pieces], add_special_tokens=False, verbose=False)["input_ids"]
    return _pack([_Piece(tuple(ids), w) for ids, (_, w) in zip(encoded, pieces)], _SpecialIds.of(tokenizer))


def empty_chunk(tokenizer: CLIPTokenizer) -> TokenChunk:
    """The chunk of the empty prompt: start, end, padding (the baseline of weighting)."""
    return _pack([], _SpecialIds.of(tokenizer))[0]


def _pack(pieces: list[_Piece], special: _SpecialIds) -> list[TokenChunk]:
    chunks: list[TokenChunk] = []
    ids, weights = [special.start], [1.0]
    for piece in pieces:
        pending = list(piece.ids)
        cuttable = len(pending) >= LONG_PIECE_TOKENS
        while pending:
            room = CHUNK_LENGTH - 1 - len(ids)  # one place stays free for the end token
            if len(pending) <= room:
                ids += pending
                weights += [piece.weight] * len(pending)
                break
            if cuttable:
                ids += pending[:room]
                weights += [piece.weight] * room
                pending = pending[room:]
            chunks.append(_close(ids, weights, special))
            ids, weights = [special.start], [1.0]
    chunks.append(_close(ids, weights, special))
    return chunks


def _close(ids: list[int], weights: list[float], special: _SpecialIds) -> TokenChunk:
    padding = CHUNK_LENGTH - len(ids) - 1
    return TokenChunk(tuple(ids + [special.end] + [special.pad] * padding),
                      tuple(weights + [1.0] * (padding + 1)))
