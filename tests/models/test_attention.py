"""Attention backend: SDPA by default; xformers only when it is there and works."""
from __future__ import annotations

import logging
import sys
import types

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0

from farm.errors import FarmError
from farm.models.attention import apply_attention_backend, fuse_qkv, requested_backend
from farm.models.load import load_checkpoint


@pytest.fixture
def tiny(tiny_checkpoints):
    return load_checkpoint(tiny_checkpoints["tiny-sd15"].single_file, torch.device("cpu"), torch.float32)


def processors(model) -> set[type]:
    return {type(p) for p in model.attn_processors.values()}


def test_default_is_sdpa_everywhere(tiny, monkeypatch):
    monkeypatch.delenv("FARM_ATTENTION", raising=False)
    assert tiny.attention == "sdpa"
    tiny.unet.set_attn_processor(AttnProcessor())
    assert apply_attention_backend(tiny.unet, tiny.vae) == "sdpa"
    assert processors(tiny.unet) == processors(tiny.vae) == {AttnProcessor2_0}


def test_sdpa_computes_what_plain_attention_computes(tiny):
    gen = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 77, 32, generator=gen)
    with torch.no_grad():
        apply_attention_backend(tiny.unet, tiny.vae, "sdpa")
        fast = tiny.unet(x, torch.tensor([10.0]), encoder_hidden_states=text).sample
        tiny.unet.set_attn_processor(AttnProcessor())  # diffusers' explicit softmax(QK^T)V reference
        plain = tiny.unet(x, torch.tensor([10.0]), encoder_hidden_states=text).sample
    assert torch.allclose(fast, plain, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif("xformers" in sys.modules or __import__("importlib").util.find_spec("xformers") is not None,
                    reason="xformers is installed here")
def test_asking_for_missing_xformers_falls_back_with_one_warning(tiny, caplog, monkeypatch):
    for how in ({"requested": "xformers"}, {"env": "xformers"}):
        caplog.clear()
        if "env" in how:
            monkeypatch.setenv("FARM_ATTENTION", how["env"])
        with caplog.at_level(logging.WARNING, logger="farm.models.attention"):
            used = apply_attention_backend(tiny.unet, tiny.vae, how.get("requested"))
        assert used == "sdpa" and processors(tiny.unet) == {AttnProcessor2_0}
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "xformers" in warnings[0].getMessage()


def test_xformers_that_imports_but_cannot_run_falls_back(tiny, caplog, monkeypatch):
    # A stand-in for a wheel built against another torch: it imports, its kernels raise.
    def broken(*_args, **_kwargs):
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward`")

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = broken
    package = types.ModuleType("xformers")
    package.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    with caplog.at_level(logging.WARNING, logger="farm.models.attention"):
        assert apply_attention_backend(tiny.unet, tiny.vae, "xformers") == "sdpa"
    assert "kernels do not run" in caplog.text and processors(tiny.vae) == {AttnProcessor2_0}


def test_unknown_backend_is_an_error_naming_the_choices():
    assert requested_backend(None, {}) == "sdpa"
    assert requested_backend(None, {"FARM_ATTENTION": "XFormers"}) == "xformers"
    with pytest.raises(FarmError, match="sdpa, xformers"):
        requested_backend("flash", {})


def test_fused_qkv_computes_what_separate_projections_compute(tiny):
    gen = torch.Generator().manual_seed(1)
    x, text = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, 32, generator=gen)
    names = {n for n, _ in tiny.unet.named_parameters()}
    with torch.no_grad():
        apart = tiny.unet(x, torch.tensor([10.0, 700.0]), encoder_hidden_states=text).sample
        layers = fuse_qkv(tiny.unet)
        fused = tiny.unet(x, torch.tensor([10.0, 700.0]), encoder_hidden_states=text).sample
    assert layers == len([m for m in tiny.unet.modules() if hasattr(m, "to_q")]) > 0
    assert processors(tiny.unet) == {FusedAttnProcessor2_0}
    torch.testing.assert_close(fused, apart, rtol=1e-5, atol=1e-5)
    # the parts are views into the fused weight, under their own names: what a checkpoint's
    # state dict fills by name lands in the fused weight
    block = tiny.unet.mid_block.attentions[0].transformer_blocks[0]
    assert block.attn1.to_k.weight.data_ptr() == block.attn1.to_qkv.weight[block.attn1.to_q.weight.shape[0]:].data_ptr()
    assert block.attn2.to_k.weight.data_ptr() == block.attn2.to_kv.weight.data_ptr()
    assert names <= {n for n, _ in tiny.unet.named_parameters()}
    with torch.no_grad():
        block.attn1.to_v.weight.zero_()
        assert block.attn1.to_qkv.weight[-block.attn1.to_v.weight.shape[0]:].abs().max() == 0
    assert fuse_qkv(tiny.unet) == 0  # already fused: left as it is


def test_fused_qkv_leaves_layers_on_another_processor_alone(tiny):
    tiny.unet.set_attn_processor(AttnProcessor())  # as xformers' would be: no fused form of it
    assert fuse_qkv(tiny.unet) == 0
    assert processors(tiny.unet) == {AttnProcessor} and not hasattr(
        tiny.unet.mid_block.attentions[0].transformer_blocks[0].attn1, "to_qkv")
