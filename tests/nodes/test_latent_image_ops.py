"""The small latent, image and mask nodes, by ComfyUI's rules (sizes, batch indices, masks)."""
import numpy as np
import pytest
import torch
from PIL import Image

from farm.nodes.conditioning_ops import ConditioningConcat
from farm.nodes.image_ops import (
    ImageInvert,
    ImageScaleBy,
    ImageScaleToTotalPixels,
    LoadImageMask,
)
from farm.nodes.latent_ops import (
    LatentFromBatch,
    LatentUpscaleBy,
    RepeatLatentBatch,
    SetLatentNoiseMask,
)
from farm.nodes.spec import NodeContext
from farm.nodes.values import Latent
from farm.sampling.denoiser import Conditioning
from farm.sampling.noise import indexed_noise, initial_noise


class _Rc:
    def __init__(self, node_ctx=None):
        self.node_ctx = node_ctx


def test_latent_upscale_by_rounds_each_side_and_keeps_the_mask():
    mask = torch.ones(1, 1, 64, 48)
    (out,) = LatentUpscaleBy().run(_Rc(), Latent(torch.randn(1, 4, 8, 6), mask), "bilinear", 1.5)
    assert out.samples.shape == (1, 4, 12, 9) and out.noise_mask is mask


def test_repeat_and_from_batch_track_where_rows_came_from():
    x = torch.arange(3 * 4 * 2 * 2, dtype=torch.float32).reshape(3, 4, 2, 2)
    (picked,) = LatentFromBatch().run(_Rc(), Latent(x), batch_index=1, length=5)  # length clipped to 2
    assert picked.batch_index == (1, 2) and torch.equal(picked.samples, x[1:])
    (again,) = LatentFromBatch().run(_Rc(), picked, batch_index=1, length=1)
    assert again.batch_index == (2,)
    (rep,) = RepeatLatentBatch().run(_Rc(), picked, amount=3)
    assert rep.samples.shape[0] == 6 and rep.batch_index == (1, 2, 3, 4, 5, 6)
    masks = torch.stack([torch.zeros(1, 16, 16), torch.ones(1, 16, 16)])
    (rep_masked,) = RepeatLatentBatch().run(_Rc(), Latent(x[:2], masks), amount=2)
    assert rep_masked.noise_mask.shape[0] == 4 and torch.equal(rep_masked.noise_mask[2], masks[0])


def test_indexed_noise_is_the_rows_a_whole_batch_would_have_had():
    shape = (4, 4, 8, 8)
    whole = torch.cat([indexed_noise(shape, 42, [i]) for i in range(4)])
    torch.testing.assert_close(indexed_noise(shape, 42, [3, 1]), whole[[3, 1]], rtol=0, atol=0)
    # one randn of the whole batch draws the same stream as row by row (what ComfyUI relies on)
    torch.testing.assert_close(initial_noise(shape, [42]), whole, rtol=0, atol=0)


def test_set_latent_noise_mask_stores_a_pixel_mask_per_row():
    (out,) = SetLatentNoiseMask().run(_Rc(), Latent(torch.zeros(1, 4, 8, 8)), torch.ones(64, 64))
    assert out.noise_mask.shape == (1, 1, 64, 64)


def test_image_scaling_inverting_and_conditioning_concat():
    image = torch.rand(1, 30, 40, 3)
    (by,) = ImageScaleBy().run(_Rc(), image, "bilinear", 0.5)
    assert by.shape == (1, 15, 20, 3)
    (total,) = ImageScaleToTotalPixels().run(_Rc(), image, "nearest-exact", 0.01)
    assert abs(total.shape[1] * total.shape[2] - 0.01 * 1024 * 1024) < 200 and total.shape[2] > total.shape[1]
    (inv,) = ImageInvert().run(_Rc(), image)
    torch.testing.assert_close(inv, 1 - image)
    to, frm = Conditioning(torch.randn(1, 77, 8), torch.randn(1, 4)), Conditioning(torch.randn(1, 154, 8))
    (cat,) = ConditioningConcat().run(_Rc(), to, frm)
    assert cat.embeds.shape == (1, 231, 8) and cat.pooled is to.pooled
    assert torch.equal(cat.embeds[:, 77:], frm.embeds)


@pytest.mark.parametrize("channel", ["alpha", "red"])
def test_load_image_mask_reads_one_channel_alpha_inverted(tmp_path, channel):
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:, :3, 3] = 255  # left half opaque
    (tmp_path / "input").mkdir()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "input" / "m.png")
    Image.fromarray(rgba[..., :3], "RGB").save(tmp_path / "input" / "rgb.png")
    ctx = NodeContext.under(tmp_path)
    (mask,) = LoadImageMask().run(_Rc(ctx), "m.png", channel)
    assert mask.shape == (1, 4, 6)
    if channel == "alpha":
        assert mask[0, 0, 0] == 0 and mask[0, 0, 5] == 1  # transparent is 1
        (opaque,) = LoadImageMask().run(_Rc(ctx), "rgb.png", "alpha")
        assert torch.equal(opaque, torch.zeros(1, 4, 6))
    else:
        assert torch.equal(mask, torch.ones(1, 4, 6))
    assert LoadImageMask.validate_inputs(ctx, "nope.png") == "Invalid image file: nope.png"
