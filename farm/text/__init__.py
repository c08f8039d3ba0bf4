"""Prompt text to conditioning: ComfyUI's prompt syntax, CLIP tokenization and encoding."""
from farm.text.conditioning import Conditioning
from farm.text.encode import ClipArch, ClipTextEncoder
from farm.text.prompt import parse_weights
from farm.text.tokenize import (
    TokenChunk,
    clip_g_tokenizer,
    clip_l_tokenizer,
    empty_chunk,
    tokenize_prompt,
)

__all__ = [
    "ClipArch", "ClipTextEncoder", "Conditioning", "TokenChunk", "clip_g_tokenizer", "clip_l_tokenizer",
    "empty_chunk", "parse_weights", "tokenize_prompt",
]
