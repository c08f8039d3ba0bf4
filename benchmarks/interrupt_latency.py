"""How long after an interrupt a running prompt ends, on the CPU with the tiny checkpoint.

    .venv/bin/python benchmarks/interrupt_latency.py [--repeats 3]

Runs the engine in this process (what a farm worker runs; Ray and HTTP add milliseconds)
and sets its stop flag a fixed delay after a node starts, the way POST /interrupt does on
a worker: while the sampler runs at 64 px (short steps), inside one long step (1024 px),
while CLIP encodes a long prompt, and while the VAE decodes a batch. Prints, per case,
the time from the flag to the engine's return and the node the stop landed in; asserts
nothing."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from farm.engine import JobContext, PlannedJob
from farm.engine.local import LocalRenderer
from farm.models.make import make_checkpoint
from farm.records.events import EventType
from farm.records.paths import FarmPaths

LONG_TEXT = "a red lighthouse on a cliff at dusk, waves, " * 400  # ~18,000 characters (the farm's cap is 20,000)


def workflow(text: str, steps: int, size: int, batch: int = 1) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 1, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "bench/interrupt"}},
    }


CASES = {  # name: (workflow, node to stop in, delay after it starts)
    "sampling, 64 px steps": (dict(text="a lighthouse", steps=200, size=64), "3", 0.5),
    "one long step, 1024 px": (dict(text="a lighthouse", steps=2, size=1024), "3", 1.0),
    "CLIP, 18k-char prompt": (dict(text=LONG_TEXT, steps=2, size=64), "6", 0.0),
    "VAE decode, 8 x 512 px": (dict(text="a lighthouse", steps=1, size=512, batch=8), "8", 0.3),
}


def measure(renderer: LocalRenderer, text: str, steps: int, size: int, batch: int = 1, node: str = "3",
            delay_s: float = 0.0, nonce: int = 0) -> tuple[float, str]:
    flag = renderer.engine.interrupt
    set_at: list[float] = []
    stopped: list[str] = []

    def events(event):
        if event.type is EventType.EXECUTING and event.data["node"] == node:
            def later():
                time.sleep(delay_s)
                set_at.append(time.perf_counter())
                flag.set()
            threading.Thread(target=later, daemon=True).start()
        if event.type is EventType.EXECUTION_INTERRUPTED:
            stopped.append(f"{event.data.get('node_id')} ({event.data.get('node_type', '?')})")

    prepared = renderer.prepare(workflow(f"{text} {nonce}", steps, size, batch))  # new text: nothing cached past 4
    job = PlannedJob(JobContext(prepared.prompt_id, prepared.prompt, None, None, events), prepared.plan)
    renderer.engine.run(job)
    ended = time.perf_counter()
    if not set_at:
        return float("nan"), "finished before the flag was set"
    return ended - set_at[0], stopped[0] if stopped else "not interrupted"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_checkpoint("tiny-sd15", root / "models" / "checkpoints" / "tiny-sd15.safetensors", seed=7)
        renderer = LocalRenderer(FarmPaths(root / "models", root / "output", root / "input", root / "temp"),
                                 device=torch.device("cpu"))
        renderer.run(renderer.prepare(workflow("warm up", 1, 64)))
        print(f"torch threads: {torch.get_num_threads()}")
        nonce = 0
        for name, (spec, node, delay_s) in CASES.items():
            latencies, where = [], set()
            for _ in range(args.repeats):
                nonce += 1
                latency, stopped = measure(renderer, node=node, delay_s=delay_s, nonce=nonce, **spec)
                latencies.append(latency)
                where.add(stopped)
            print(f"{name:26s} stop -> end: median {statistics.median(latencies) * 1000:8.1f} ms, "
                  f"max {max(latencies) * 1000:8.1f} ms; stopped in {', '.join(sorted(where))}")
        renderer.close()


if __name__ == "__main__":
    main()
