"""Stop checks inside one model call (farm.sampling.stop), on the real tiny checkpoint:
the CLIP forward of a long prompt, a VAE decode of a batch, and the hooks' bounds (their
thread, their lifetime)."""
from __future__ import annotations

import threading

import pytest
import torch

from farm.errors import Interrupted
from farm.models.load import load_checkpoint
from farm.nodes.values import VaeModel
from farm.sampling.stop import blocks_of, checked_blocks
from farm.text.encode import ClipTextEncoder

LONG_PROMPT = "a red lighthouse on a cliff at dusk, waves, " * 400  # ~18,000 characters, ~50 chunks


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return load_checkpoint(tiny_models / "checkpoints" / "tiny-sd15.safetensors", torch.device("cpu"), torch.float32)


class StopAfter:
    """A stop check that lets `n` blocks start, then stops the run (as an interrupt does)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls > self.n:
            raise Interrupted("interrupted by the user")


def test_a_long_prompt_stops_between_encoder_layers(tiny):
    clip = ClipTextEncoder.sd1(tiny.text_encoders[0], tiny.tokenizers[0])
    layers = len(blocks_of(clip.text_model))
    assert layers == clip.text_model.config.num_hidden_layers
    stop = StopAfter(1)
    with pytest.raises(Interrupted):
        clip.encode(LONG_PROMPT, stop)
    assert stop.calls == 2  # the second layer never ran
    # a check that never stops runs before each layer and changes nothing in the result
    counting = StopAfter(10**9)
    assert torch.equal(clip.encode(LONG_PROMPT, counting).embeds, clip.encode(LONG_PROMPT).embeds)
    assert counting.calls == layers


def test_a_vae_decode_of_a_batch_stops_between_blocks(tiny):
    vae = VaeModel(tiny.vae)
    latents = torch.zeros(4, 4, 8, 8)
    stop = StopAfter(2)
    with pytest.raises(Interrupted):
        vae.decode(latents, stop)
    assert stop.calls == 3
    assert vae.decode(latents).shape == (4, 64, 64, 3)  # the hooks are gone: it decodes again


def test_hooks_answer_only_their_own_thread_and_leave_with_the_block(tiny):
    model = tiny.text_encoders[0]
    ids = torch.ones(1, 77, dtype=torch.long)
    failures: list[BaseException] = []

    def other_thread() -> None:
        try:
            model(ids)  # another engine call using the same encoder: not this call's flag
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            failures.append(exc)

    with checked_blocks([model], StopAfter(0)):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        with pytest.raises(Interrupted):
            model(ids)
    assert failures == []
    assert all(not block._forward_pre_hooks for block in blocks_of(model))
    model(ids)  # after the block no check runs at all
