"""What EasyCache (the opt-in step cache) skips and how much it changes the image.

    python benchmarks/step_cache.py [--arch tiny-sd15] [--size 256] [--steps 20] [--json FILE]

Renders one txt2img job without EasyCache and with it at several reuse thresholds, on a
checkpoint the project makes (random weights), and prints per threshold: UNet calls
skipped, sampling seconds, and the decoded image's difference to the uncached one (PSNR in
dB over 8-bit pixels, and the largest pixel difference). Random weights do not behave like
a trained model's, so the skip counts here say that the mechanism works and what it costs,
not what a trained checkpoint would skip: measure on the studio's own checkpoint for that.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch

from farm.engine.local import LocalRenderer
from farm.models.make import make_checkpoint
from farm.records.paths import FarmPaths

THRESHOLDS = (0.0, 0.05, 0.1, 0.2, 0.4)


def workflow(ckpt: str, size: int, steps: int, threshold: float | None) -> dict:
    model = ["4", 0]
    nodes = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    if threshold is not None:
        nodes["10"] = {"class_type": "EasyCache", "inputs": {"model": model, "reuse_threshold": threshold,
                                                             "start_percent": 0.15, "end_percent": 0.95,
                                                             "verbose": False}}
        model = ["10", 0]
    nodes.update({
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 7, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": model, "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    })
    return nodes


class SkipLog(logging.Handler):
    """Keeps the sampler's 'EasyCache skipped N of M UNet calls' line."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.last = (0, 0)  # (skipped, UNet calls) of the last run

    def emit(self, record):
        words = record.getMessage().split()
        if words[:2] == ["EasyCache", "skipped"]:
            self.last = (int(words[2]), int(words[4]))


def render(renderer: LocalRenderer, wf: dict) -> tuple[torch.Tensor, float]:
    renderer.engine.cache.clear()  # every run samples: no cached node output stands in
    prepared = renderer.prepare(wf)
    started = time.perf_counter()
    outcome = renderer.run(prepared)
    seconds = time.perf_counter() - started
    if not outcome.ok:
        raise SystemExit(f"render failed: {outcome.error}")
    return renderer.engine.cache.get(prepared.plan.signatures["8"])[0], seconds


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) * 255).round().pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _finite(value: float):
    return round(value, 2) if math.isfinite(value) else "inf"  # JSON has no infinity


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="tiny-sd15")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--root", type=Path, default=Path("/tmp/step-cache-root"))
    parser.add_argument("--json", type=Path)
    a = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = f"{a.arch}.safetensors"
    path = a.root / "models" / "checkpoints" / ckpt
    if not path.exists():
        make_checkpoint(a.arch, path, seed=0)
    root = a.root
    renderer = LocalRenderer(FarmPaths(root / "models", root / "output", root / "input", root / "temp"), device=device)
    skips = SkipLog()
    logging.getLogger("farm.nodes.ksampling").addHandler(skips)
    logging.getLogger("farm.nodes.ksampling").setLevel(logging.INFO)
    render(renderer, workflow(ckpt, a.size, a.steps, None))  # loads the checkpoint: not timed below
    base, base_s = render(renderer, workflow(ckpt, a.size, a.steps, None))
    skips.last = (0, 0)
    rows = [{"reuse_threshold": None, "seconds": round(base_s, 3), "unet_calls_skipped": 0, "psnr_db": "inf",
             "max_pixel_diff": 0}]
    for threshold in THRESHOLDS:
        image, seconds = render(renderer, workflow(ckpt, a.size, a.steps, threshold))
        rows.append({"reuse_threshold": threshold, "seconds": round(seconds, 3), "unet_calls_skipped": skips.last[0],
                     "psnr_db": _finite(psnr(image, base)),
                     "max_pixel_diff": int(((image - base).abs() * 255).round().max())})
    renderer.close()
    for row in rows:
        print(row)
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "arch": a.arch, "size": a.size, "steps": a.steps, "sampler": "euler", "scheduler": "normal",
              "rows": rows}
    if a.json:
        a.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
