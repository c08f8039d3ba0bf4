"""VAEDecode in a batch of jobs: one decoder call for the jobs' latents together (a call
per job left the GPU decoding one image at a time), split by pixel count, and each job
gets the images it gets alone."""
import pytest
import torch

import farm.nodes.latent as latent_nodes
from farm.nodes.values import VaeModel
from node_rendering import batched_and_alone
from test_ksampler_steps import renderer, workflow  # noqa: F401 - its module-scoped renderer fixture, reused


@pytest.fixture
def decode_rows(monkeypatch) -> list[int]:
    """Rows of each VAE decoder call from now on (the real decode runs)."""
    rows: list[int] = []
    real = VaeModel.decode

    def spy(self, latents, check=None):
        rows.append(latents.shape[0])
        return real(self, latents, check)

    monkeypatch.setattr(VaeModel, "decode", spy)
    return rows


def _batch(renderer, wfs):
    """Decoded images of one engine call of `wfs`, against each alone."""
    return batched_and_alone(renderer, wfs, node="8")


def test_jobs_share_one_decoder_call_and_get_what_they_get_alone(renderer, decode_rows):
    wfs = [workflow(2, seed, "euler") for seed in (1, 2, 3)]
    pairs = _batch(renderer, wfs)
    assert decode_rows == [1, 1, 1, 3]  # each job alone, then the batch in one call
    for got, expected in pairs:
        assert got.shape == expected.shape == (1, 64, 64, 3)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (pairs[0][0] - pairs[1][0]).abs().max() > 1e-3  # other seeds, other images


def test_a_batch_over_the_pixel_limit_is_split_and_other_sizes_decode_apart(renderer, decode_rows, monkeypatch):
    monkeypatch.setattr(latent_nodes, "DECODE_PIXELS_PER_CALL", 2 * 64 * 64)  # two 64 px images a call
    wfs = [workflow(2, seed, "euler") for seed in (4, 5, 6)]
    wide = workflow(2, 7, "euler")
    wide["5"]["inputs"]["width"] = 128  # another latent size: its own call
    pairs = _batch(renderer, [*wfs, wide])
    assert decode_rows[4:] == [2, 1, 1]
    for got, expected in pairs:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert pairs[-1][0].shape == (1, 64, 128, 3)
