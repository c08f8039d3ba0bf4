"""How long a LoRA switch takes: patching a resident UNet in place and restoring it.

    .venv/bin/python benchmarks/lora_switch.py [--arch sd15|sdxl] [--rank 4] [--device cpu]

Builds the full-size UNet from farm's shipped config (random weights; no checkpoint file
needed), writes a full-size random LoRA of the given rank, binds it, and times entering
(save the touched weights, add the deltas) and leaving (copy the saved weights back)
`farm.models.lora.patched`. Prints; asserts nothing but that the base came back exact."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from farm.models.arch import arch_info
from farm.models.lora import bind, patched, read_lora
from farm.models.lora_keys import UNET_ROOT, unet_key_map
from farm.models.make_lora import make_lora


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", choices=("sd15", "sdxl"), default="sd15")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    unet = UNet2DConditionModel.from_config(dict(arch_info(args.arch).configs.unet)).to(device, dtype)
    unet.requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_lora(f"lora-{args.arch}", Path(tmp) / "l.safetensors", rank=args.rank)
        lora = read_lora(path)
    bound, used = bind(lora, 0.8, {UNET_ROOT: unet_key_map(unet)}, {UNET_ROOT: unet})
    probe = unet.get_submodule(bound.targets[0][1]).weight
    before = probe.detach().clone()
    print(f"{args.arch} UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.0f} M params on {device} {dtype}; "
          f"LoRA rank {args.rank}: {len(bound.targets)} UNet layers, {lora.nbytes / 2**20:.1f} MiB")
    for i in range(args.repeats):
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        started = time.perf_counter()
        with patched({UNET_ROOT: unet}, [bound]):
            sync()
            applied = time.perf_counter()
        sync()
        restored = time.perf_counter()
        print(f"  run {i}: apply {applied - started:.3f} s, restore {restored - applied:.3f} s")
    assert torch.equal(probe, before)


if __name__ == "__main__":
    main()
