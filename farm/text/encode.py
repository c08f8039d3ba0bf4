"""CLIPTextEncode and CLIPSetLastLayer: the value on ComfyUI's CLIP socket and its encoding.

Which hidden layer is read, per ComfyUI:
- SD1.x (CLIP ViT-L): the last layer after the final layer norm. CLIPSetLastLayer(n)
  reads hidden_states[n] and still applies the final layer norm (so -1 is the default).
- SDXL, both encoders: hidden_states[-2] without the final layer norm. CLIPSetLastLayer(n)
  moves both encoders to hidden_states[n], still without the layer norm (so -1 is NOT the
  last_hidden_state there).
- A layer deeper than the encoder has (|n| > num_hidden_layers) falls back to the normed
  last layer, per encoder; on SDXL, n=-13..-24 does so for clip_l (12 layers) only.

Emphasis weights follow ComfyUI: when any token weighs != 1, the empty prompt is encoded
too (in the same forward) and each weighted token becomes z_empty + w * (z - z_empty).

Embeddings come back on the text model's device in its dtype (ComfyUI returns float32 on
its intermediate device; a caller that wants that converts). The weight interpolation
itself runs in float32, as in ComfyUI.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from farm.errors import InvalidInputError
from farm.sampling.stop import StopCheck, checked_blocks
from farm.text.conditioning import Conditioning
from farm.text.tokenize import (
    CHUNK_LENGTH,
    TokenChunk,
    clip_g_tokenizer,
    clip_l_tokenizer,
    empty_chunk,
    tokenize_prompt,
)


class ClipArch(str, Enum):
    SD1 = "sd1"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl-refiner"  # OpenCLIP bigG alone, in tokenizer/text_model


@dataclass(frozen=True)
class _Tower:
    """How ComfyUI reads one text encoder of an architecture."""

    tokenizer: CLIPTokenizer
    model: CLIPTextModel | CLIPTextModelWithProjection
    default_layer: int | None  # None: the normed last layer
    norm_hidden: bool  # apply final_layer_norm to an intermediate layer's output
    gives_pooled: bool  # its projected pooled output is the conditioning's pooled


@dataclass(frozen=True)
class ClipTextEncoder:
    """The text side of a checkpoint (ComfyUI's CLIP value). Immutable: layer changes copy."""

    arch: ClipArch
    tokenizer: CLIPTokenizer  # SD1's, or SDXL's clip_l
    text_model: CLIPTextModel  # SD1's, or SDXL's clip_l
    tokenizer_g: CLIPTokenizer | None = None  # SDXL only
    text_model_g: CLIPTextModelWithProjection | None = None  # SDXL only
    layer: int | None = None  # CLIPSetLastLayer's stop_at_clip_layer; None = the arch's default

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch", ClipArch(self.arch))
        has_g = (self.tokenizer_g is not None, self.text_model_g is not None)
        if self.arch is ClipArch.SDXL and has_g != (True, True):
            raise InvalidInputError("an SDXL text encoder needs tokenizer_g and text_model_g (OpenCLIP bigG); "
                             "use ClipTextEncoder.sdxl(...)")
        if self.arch is not ClipArch.SDXL and any(has_g):
            raise InvalidInputError(f"an {self.arch.value} text encoder has a single CLIP model; "
                                    "drop tokenizer_g/text_model_g")
        if self.layer is not None and self.layer >= 0:
            raise InvalidInputError(f"CLIP layer {self.layer} is not allowed: give a negative layer, "
                             "-1 for the last, -2 for the one before it")

    @classmethod
    def sd1(cls, text_model: CLIPTextModel, tokenizer: CLIPTokenizer | None = None) -> ClipTextEncoder:
        return cls(ClipArch.SD1, tokenizer or clip_l_tokenizer(), text_model)

    @classmethod
    def sdxl(cls, text_model_l: CLIPTextModel, text_model_g: CLIPTextModelWithProjection,
             tokenizer_l: CLIPTokenizer | None = None, tokenizer_g: CLIPTokenizer | None = None,
             ) -> ClipTextEncoder:
        return cls(ClipArch.SDXL, tokenizer_l or clip_l_tokenizer(), text_model_l,
                   tokenizer_g or clip_g_tokenizer(), text_model_g)

    @classmethod
    def sdxl_refiner(cls, text_model_g: CLIPTextModelWithProjection, tokenizer_g: CLIPTokenizer | None = None,
                     ) -> ClipTextEncoder:
        return cls(ClipArch.SDXL_REFINER, tokenizer_g or clip_g_tokenizer(), text_model_g)

    def with_last_layer(self, layer: int) -> ClipTextEncoder:
        """CLIPSetLastLayer: a copy that reads hidden layer `layer` (-1 last, -2 penultimate...)."""
        return dataclasses.replace(self, layer=layer)

    def encode(self, text: str, check: StopCheck | None = None) -> Conditioning:
        """CLIPTextEncode: embeds [1, 77*chunks, D] (SDXL: D = D_l + D_g) and SDXL's pooled [1, P].

        `check` (an interrupt) runs before every encoder layer: a long prompt's chunks go
        through in one forward, as in ComfyUI, so that is where a stop can land inside it."""
        towers = self._towers()
        # no_grad rather than inference_mode: inference tensors refuse in-place updates
        # later, and the conditioning is handed on to code that this module does not own.
        with torch.no_grad(), checked_blocks([t.model for t in towers], check):
            outputs = [_encode_tower(text, tower, self.layer) for tower in towers]
        if len(outputs) == 1:  # SD1 (no pooled) or the refiner (bigG's pooled)
            return Conditioning(embeds=outputs[0][0], pooled=outputs[0][1])
        (z_l, _), (z_g, pooled) = outputs
        # ComfyUI cuts both to the shorter; both tokenizers chunk alike, so this is a guard.
        length = min(z_l.shape[1], z_g.shape[1])
        dtype = torch.promote_types(z_l.dtype, z_g.dtype)
        embeds = torch.cat([z_l[:, :length].to(dtype), z_g[:, :length].to(z_l.device, dtype)], dim=-1)
        return Conditioning(embeds=embeds, pooled=pooled.to(z_l.device))

    def encode_sdxl(self, text_g: str, text_l: str) -> Conditioning:
        """CLIPTextEncodeSDXL: clip_g reads text_g and clip_l text_l; the one with fewer
        77-token chunks is padded with empty-prompt chunks, as ComfyUI pads its tokens."""
        if self.arch is not ClipArch.SDXL:
            raise InvalidInputError("CLIPTextEncodeSDXL needs SDXL's CLIP (clip_l and clip_g); this CLIP is "
                                    f"{self.arch.value}'s: use CLIP Text Encode (Prompt)")
        tower_l, tower_g = self._towers()
        with torch.no_grad():
            z_l, _ = _encode_tower(text_l, tower_l, self.layer)
            z_g, pooled = _encode_tower(text_g, tower_g, self.layer)
            z_l, z_g = _pad_chunks(z_l, z_g, tower_l, tower_g, self.layer)
        dtype = torch.promote_types(z_l.dtype, z_g.dtype)
        embeds = torch.cat([z_l.to(dtype), z_g.to(z_l.device, dtype)], dim=-1)
        return Conditioning(embeds=embeds, pooled=pooled.to(z_l.device))

    def _towers(self) -> list[_Tower]:
        if self.arch is ClipArch.SD1:
            return [_Tower(self.tokenizer, self.text_model, default_layer=None, norm_hidden=True,
                           gives_pooled=False)]
        if self.arch is ClipArch.SDXL_REFINER:  # ComfyUI reads bigG the same way here as in the base
            return [_Tower(self.tokenizer, self.text_model, default_layer=-2, norm_hidden=False, gives_pooled=True)]
        return [_Tower(self.tokenizer, self.text_model, default_layer=-2, norm_hidden=False, gives_pooled=False),
                _Tower(self.tokenizer_g, self.text_model_g, default_layer=-2, norm_hidden=False, gives_pooled=True)]


def _encode_tower(text: str, tower: _Tower, layer: int | None) -> tuple[Tensor, Tensor | None]:
    chunks = tokenize_prompt(text, tower.tokenizer)
    weighted = any(c.has_weights for c in chunks)
    # The empty prompt rides in the same batch as the chunks: one forward for both.
    batch = (chunks + [empty_chunk(tower.tokenizer)]) if weighted else chunks
    model = tower.model
    ids = torch.tensor([c.ids for c in batch], dtype=torch.long, device=model.device)
    layer = layer if layer is not None else tower.default_layer
    hidden_wanted = layer is not None and abs(layer) <= model.config.num_hidden_layers
    out = model(ids, output_hidden_states=hidden_wanted)
    if hidden_wanted:
        z = out.hidden_states[layer]
        if tower.norm_hidden:
            z = _final_layer_norm(model)(z)
    else:
        z = out.last_hidden_state
    if weighted:
        z = _emphasize(z[: len(chunks)], z[len(chunks)], chunks)
    embeds = z[: len(chunks)].reshape(1, -1, z.shape[-1])
    pooled = out.text_embeds[0:1] if tower.gives_pooled else None  # the first chunk's, as ComfyUI
    return embeds, pooled


def _pad_chunks(z_l: Tensor, z_g: Tensor, tower_l: _Tower, tower_g: _Tower, layer: int | None
                ) -> tuple[Tensor, Tensor]:
    """Chunks are encoded one by one, so padding the tokens with empty chunks is appending
    the empty prompt's encoding to the shorter side."""
    missing = (z_g.shape[1] - z_l.shape[1]) // CHUNK_LENGTH
    if missing > 0:
        empty = _encode_tower("", tower_l, layer)[0]
        z_l = torch.cat([z_l, empty.repeat(1, missing, 1)], dim=1)
    elif missing < 0:
        empty = _encode_tower("", tower_g, layer)[0]
        z_g = torch.cat([z_g, empty.repeat(1, -missing, 1)], dim=1)
    return z_l, z_g


def _final_layer_norm(model: CLIPTextModel | CLIPTextModelWithProjection) -> torch.nn.Module:
    # transformers 5 flattened CLIPTextModel (no .text_model); 4.x and the projection model nest it.
    return getattr(model, "text_model", model).final_layer_norm


def _emphasize(z: Tensor, z_empty: Tensor, chunks: list[TokenChunk]) -> Tensor:
    """z_empty + w * (z - z_empty) where w != 1; tokens of weight 1 keep their exact value."""
    w = torch.tensor([c.weights for c in chunks], dtype=torch.float32, device=z.device).unsqueeze(-1)
    z32, empty32 = z.float(), z_empty.float()
    return torch.where(w != 1.0, (z32 - empty32) * w + empty32, z32).to(z.dtype)
